"""A whole training step with blended attention on, brope_asr's `attention` (`blended_scores`: the blend's scores
as one product rescaled entry by entry, or two products summed, whichever keeps less for backward) against the one
before (always two products summed), swapped between interleaved samples: bench row 1's models and inputs,
2 threads.

    python runs/speed/logs/rescaled_blend_step.py small; python runs/speed/logs/rescaled_blend_step.py base
"""
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_step import spread, swapped_step  # noqa: E402


def two_products(q, k, v, mask=None, is_causal=False, blend=None, temperature=None, dropout=0.0):
    """`attention` as it was before the blend's scores could be one rescaled product (no dropout: bench row 1 has none)."""
    if blend is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
    assert not dropout
    return brope_asr.attend_to_scores(brope_asr.summed_product_scores(q, k, blend, temperature), v, mask, is_causal)


def main():
    torch.set_num_threads(2)
    preset = sys.argv[1]
    old, new, ratios, pairs = swapped_step(preset, dict(blend_attention=True), "attention", two_products, brope_asr.attention)
    print(f"{preset}, blended attention: two products {old * 1e3:.1f} ms, the form that keeps less {new * 1e3:.1f} ms, {spread(ratios, pairs)}")


if __name__ == "__main__":
    main()
