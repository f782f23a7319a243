"""A whole training step with the decoder's embedding gradient sparse (`Decoder.embed`) against dense (the plain
`nn.Embedding` call), swapped between interleaved samples: bench row 1's models and inputs, 2 threads, after
`keep_freed_memory` as the bench and train_hf.py run. At small (V = 40) the batch reads more rows than the table
has, so both sides take the dense gradient: that line checks the rule costs nothing there.

    python runs/speed/logs/sparse_embedding_step.py base; ... small
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_step import spread, swapped_step  # noqa: E402


def dense_embed(decoder: brope_asr.Decoder, input_ids: torch.Tensor) -> torch.Tensor:
    """The embedding as before: `nn.Embedding`'s call, whose backward zero-fills a (V, D) gradient."""
    return decoder.embed_tokens(input_ids)


def main():
    torch.set_num_threads(2)
    brope_asr.keep_freed_memory()
    preset = sys.argv[1]
    dense, sparse, ratios, pairs = swapped_step(preset, {}, "embed", dense_embed, brope_asr.Decoder.embed, brope_asr.Decoder)
    print(f"{preset}: dense {dense * 1e3:.1f} ms, sparse {sparse * 1e3:.1f} ms, {spread(ratios, pairs)}")


if __name__ == "__main__":
    main()
