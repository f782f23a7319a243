"""A whole training step with `conv_frames`' depthwise path as today's (one addcmul per tap into one new tensor)
against the code before (125175d: a sum of k products, then the bias: 2k + 1 passes), the model's `conv_frames`
swapped between interleaved samples: bench row 1's models and inputs, 2 threads, after `keep_freed_memory`.

    python runs/speed/logs/depthwise_step.py base; ... small
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_halves import module_at  # noqa: E402
from rotation_step import spread, swapped_step  # noqa: E402


def main():
    torch.set_num_threads(2)
    brope_asr.keep_freed_memory()
    preset = sys.argv[1]
    old, new, ratios, pairs = swapped_step(preset, {}, "conv_frames", module_at("125175d").conv_frames, brope_asr.conv_frames)
    print(f"{preset}: sum of products {old * 1e3:.1f} ms, addcmul {new * 1e3:.1f} ms, {spread(ratios, pairs)}")


if __name__ == "__main__":
    main()
