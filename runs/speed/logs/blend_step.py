"""A whole training step with blended attention on, brope_asr's `attention` (the blend's scores written out) against
the one before (the blend as one 2 Dh-wide product through scaled_dot_product_attention's unfused path), swapped
between interleaved samples: bench row 1's models and inputs, 2 threads.

    python runs/speed/logs/blend_step.py small; python runs/speed/logs/blend_step.py base
"""
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_step import CPU  # noqa: E402
from tools.bench_brope_asr import blended_unfused, ours_model, random_clips, random_labels, training_step  # noqa: E402


def unfused(q, k, v, mask=None, is_causal=False, blend=None, temperature=None, dropout=0.0):
    """`attention` as it was before the blend's scores were written out."""
    if blend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
    return blended_unfused(q, k, v, mask, is_causal, blend, temperature)


def main():
    torch.set_num_threads(2)
    preset = sys.argv[1]
    config = brope_asr.BRoPEASRConfig.from_preset(preset)
    model, inputs = ours_model(dict(name=preset), dict(blend_attention=True), random_clips(8, 3), random_labels(8, config), CPU())
    step, written_out = training_step(model, inputs, CPU()), brope_asr.attention

    def seconds(attention, steps):
        brope_asr.attention = attention
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    steps, pairs = (5, 15) if preset == "small" else (1, 21)
    seconds(unfused, 3), seconds(written_out, 3)
    old, new = zip(*((seconds(unfused, steps), seconds(written_out, steps)) for _ in range(pairs)))
    ratios = [a / b for a, b in zip(old, new)]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{preset}, blended attention: unfused SDPA {statistics.median(old) * 1e3:.1f} ms, written out "
          f"{statistics.median(new) * 1e3:.1f} ms, {statistics.median(ratios):.3f}x "
          f"(interquartile {quartiles[0]:.2f}-{quartiles[2]:.2f}, {pairs} pairs)")


if __name__ == "__main__":
    main()
