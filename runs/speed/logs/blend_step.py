"""A whole training step with blended attention on, brope_asr's `attention` (the blend's scores written out) against
the one before (the blend as one 2 Dh-wide product through scaled_dot_product_attention's unfused path), swapped
between interleaved samples: bench row 1's models and inputs, 2 threads.

    python runs/speed/logs/blend_step.py small; python runs/speed/logs/blend_step.py base
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_step import spread, swapped_step  # noqa: E402
from tools.bench_brope_asr import blended_unfused  # noqa: E402


def unfused(q, k, v, mask=None, is_causal=False, blend=None, temperature=None, dropout=0.0):
    """`attention` as it was before the blend's scores were written out."""
    if blend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
    return blended_unfused(q, k, v, mask, is_causal, blend, temperature)


def main():
    torch.set_num_threads(2)
    preset = sys.argv[1]
    old, new, ratios, pairs = swapped_step(preset, dict(blend_attention=True), "attention", unfused, brope_asr.attention)
    print(f"{preset}, blended attention: unfused SDPA {old * 1e3:.1f} ms, written out {new * 1e3:.1f} ms, {spread(ratios, pairs)}")


if __name__ == "__main__":
    main()
