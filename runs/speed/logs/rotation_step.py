"""A whole training step with brope_asr's Rotation against the old one (torch.cat of the halves), the model's
`Rotation` swapped between interleaved samples: bench row 1's models and inputs, 2 threads.

    python runs/speed/logs/rotation_step.py small "{}"; ... small "{'use_betweenness': True}"; ... base "{}"
"""
import ast
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_halves import CatRotation  # noqa: E402
from tools.bench_brope_asr import ours_model, random_clips, random_labels, training_step  # noqa: E402


class CPU:
    device = torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()


def main():
    torch.set_num_threads(2)
    preset, options = sys.argv[1], ast.literal_eval(sys.argv[2]) if len(sys.argv) > 2 else {}
    config = brope_asr.BRoPEASRConfig.from_preset(preset)
    model, inputs = ours_model(dict(name=preset), options, random_clips(8, 3), random_labels(8, config), CPU())
    step, in_place = training_step(model, inputs, CPU()), brope_asr.Rotation

    def seconds(rotation, steps):
        brope_asr.Rotation = rotation
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    steps, pairs = (5, 15) if preset == "small" else (1, 21)
    seconds(CatRotation, 3), seconds(in_place, 3)
    old, new = zip(*((seconds(CatRotation, steps), seconds(in_place, steps)) for _ in range(pairs)))
    ratios = [a / b for a, b in zip(old, new)]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{preset} {options}: cat {statistics.median(old) * 1e3:.1f} ms, in place {statistics.median(new) * 1e3:.1f} ms, "
          f"{statistics.median(ratios):.3f}x (interquartile {quartiles[0]:.2f}-{quartiles[2]:.2f}, {pairs} pairs)")


if __name__ == "__main__":
    main()
