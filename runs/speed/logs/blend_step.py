"""A whole training step with blended attention on, brope_asr's `attention` against an earlier form of it, swapped
between interleaved samples: bench row 1's models and inputs, 2 threads. The earlier forms:
- unfused (the default): the blend as one 2 Dh-wide product through scaled_dot_product_attention's unfused path,
  before the blend's scores were written out (blend_step.txt);
- summed: the scores always as two Dh-wide products summed, before `blended_scores` could take one product
  rescaled entry by entry (rescaled_blend_step.txt).

    python runs/speed/logs/blend_step.py small; python runs/speed/logs/blend_step.py base
    python runs/speed/logs/blend_step.py small summed; python runs/speed/logs/blend_step.py base summed
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


def summed(q, k, v, mask, is_causal, blend, temperature):
    """The blend's scores as two products summed, then `attention`'s own masks, softmax and product with v."""
    return brope_asr.attend_to_scores(brope_asr.summed_product_scores(q, k, blend, temperature), v, mask, is_causal)


BEFORE = {"unfused": ("unfused SDPA", "written out", blended_unfused), "summed": ("two products", "the form that keeps less", summed)}


def main():
    torch.set_num_threads(2)
    preset, before = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "unfused"
    old_name, new_name, blended = BEFORE[before]

    def earlier(q, k, v, mask=None, is_causal=False, blend=None, temperature=None, dropout=0.0):
        """`attention` as it was before (bench row 1 has no attention dropout)."""
        if blend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)
        assert not dropout
        return blended(q, k, v, mask, is_causal, blend, temperature)

    old, new, ratios, pairs = swapped_step(preset, dict(blend_attention=True), "attention", earlier, brope_asr.attention)
    print(f"{preset}, blended attention: {old_name} {old * 1e3:.1f} ms, {new_name} {new * 1e3:.1f} ms, {spread(ratios, pairs)}")


if __name__ == "__main__":
    main()
