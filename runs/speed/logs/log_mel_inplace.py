"""`log_mel_spectrogram` before (c6a4344: a new Hann window per call, |z|^2 as a sum of two squares, the
clamp, log10 and the final scaling each to a new tensor) and now (window built once, in place from the mel
product on), interleaved in one process, 21 pairs of 200 calls, 2 threads: one 3-s clip, and a batch of 8.

    python runs/speed/logs/log_mel_inplace.py
"""
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_halves import module_at  # noqa: E402
from waveform_layers import clock  # noqa: E402


def main():
    torch.set_num_threads(2)
    before = module_at("c6a4344")
    torch.manual_seed(0)
    for name, audio in (("one 3-s clip", 0.1 * torch.randn(48000)), ("batch of 8 3-s clips", 0.1 * torch.randn(8, 48000))):
        old, new = (lambda: before.log_mel_spectrogram(audio)), (lambda: brope_asr.log_mel_spectrogram(audio))
        difference = (old() - new()).abs().max().item()
        clock(old, 200), clock(new, 200)
        pairs = [(clock(old, 200), clock(new, 200)) for _ in range(21)]
        ratios = [a / b for a, b in pairs]
        quartiles = statistics.quantiles(ratios, n=4)
        print(f"{name}: before {1e6 * statistics.median(a for a, _ in pairs):.0f} us, now {1e6 * statistics.median(b for _, b in pairs):.0f} us, "
              f"{statistics.median(ratios):.3f}x (interquartile {quartiles[0]:.2f}-{quartiles[2]:.2f}); max abs difference {difference:.1e}")


if __name__ == "__main__":
    main()
