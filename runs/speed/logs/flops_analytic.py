"""An analytic FLOP count of one training step (nanoGPT's `estimate_mfu` way: 6 x MACs per position of
every weight, plus the attention products), against the bench's `FlopCounterMode` count (issue 13).

Usage: python runs/speed/logs/flops_analytic.py (from the repository root); options off, 3-s clips, batch 8.
"""
import sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from brope_asr import BRoPEASRConfig, mel_bins_below
from tools.bench_brope_asr import CLIP_SECONDS, LABEL_TOKENS, FULL, Runner, model_flops, ours_model, random_clips, random_labels


def analytic_flops(config: BRoPEASRConfig, batch: int, frames: int, tokens: int) -> int:
    """Forward + backward = 3 x forward, forward = 2 x multiply-accumulates (options off, no dropout cost)."""
    D, F_enc, F_dec, V = config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim, config.vocab_size
    T, S = frames, tokens
    macs = mel_bins_below(config.num_mel_bins, config.spectrogram_max_hz) * D * 3 * T  # conv_in
    macs += (3 * D + D * D) * T  # depthwise-separable convolution
    for _ in range(config.downsampling_factor.bit_length() - 1):
        T = (T + 1) // 2
        macs += 3 * D * D * T  # a stride-2 convolution
    macs += config.encoder_layers * ((4 * D * D + 2 * D * F_enc) * T + 2 * T * T * D)  # projections, FFN, q.k and a.v
    macs += config.decoder_layers * ((6 * D * D + 2 * D * F_dec) * S + 2 * D * D * T + 2 * S * S * D + 2 * S * T * D)
    macs += V * D * S + (V * D * T if config.ctc_weight else 0)  # output projection, CTC head
    return 6 * batch * macs


runner = Runner(torch.device("cpu"), repeats=1)
for label, preset in FULL.presets.items():
    config = BRoPEASRConfig.from_preset(**preset)
    counted = model_flops(*ours_model(preset, {}, random_clips(FULL.batch, CLIP_SECONDS), random_labels(FULL.batch, config), runner), runner)
    estimate = analytic_flops(config, FULL.batch, CLIP_SECONDS * 100, LABEL_TOKENS)
    print(f"{label}: counted {counted / 1e9:.3f} GFLOP, analytic {estimate / 1e9:.3f} GFLOP, ratio {estimate / counted:.4f}")
