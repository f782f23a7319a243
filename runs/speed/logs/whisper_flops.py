"""Model FLOPs of one training step (forward and backward, bench row 5's `model_flops`), batch 8 x 3 s: ours (options
off) against a Whisper of the same size cut to 3 s, as bench row 1 builds them. Counts, so no timing noise.

    python runs/speed/logs/whisper_flops.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brope_asr import BRoPEASRConfig  # noqa: E402
from rotation_step import CPU  # noqa: E402
from tools.bench_brope_asr import CLIP_SECONDS, model_flops, ours_model, random_clips, random_labels, whisper_model  # noqa: E402

for preset in ("small", "base"):
    config = BRoPEASRConfig.from_preset(preset)
    clips, labels = random_clips(8, CLIP_SECONDS), random_labels(8, config)
    ours = model_flops(*ours_model(dict(name=preset), {}, clips, labels, CPU()), CPU())
    whisper = model_flops(*whisper_model(config, CLIP_SECONDS, clips, labels, CPU()), CPU())
    print(f"{preset}: ours {ours / 1e9:.2f} GFLOP, Whisper cut to 3 s {whisper / 1e9:.2f} GFLOP, Whisper / ours {whisper / ours:.3f}")
