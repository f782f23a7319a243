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
from rotation_halves import cat_rotation  # noqa: E402
from tools.bench_brope_asr import ours_model, random_clips, random_labels, training_step  # noqa: E402


class CPU:
    device = torch.device("cpu")

    def autocast(self):
        return contextlib.nullcontext()


def swapped_step(preset: str, options: dict, name: str, old, new) -> tuple[float, float, list[float], int]:
    """A training step of bench row 1's model with brope_asr.<name> set to `old` and to `new`, interleaved.

    Returns: (median old seconds, median new seconds, old / new ratio of each pair, pairs).
    """
    config = brope_asr.BRoPEASRConfig.from_preset(preset)
    model, inputs = ours_model(dict(name=preset), options, random_clips(8, 3), random_labels(8, config), CPU())
    step = training_step(model, inputs, CPU())

    def seconds(value, steps):
        setattr(brope_asr, name, value)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - start) / steps

    steps, pairs = (5, 15) if preset == "small" else (1, 21)
    seconds(old, 3), seconds(new, 3)
    old_times, new_times = zip(*((seconds(old, steps), seconds(new, steps)) for _ in range(pairs)))
    ratios = [a / b for a, b in zip(old_times, new_times)]
    return statistics.median(old_times), statistics.median(new_times), ratios, pairs


def spread(ratios: list[float], pairs: int) -> str:
    """"1.040x (interquartile 1.00-1.09, 15 pairs)"."""
    quartiles = statistics.quantiles(ratios, n=4)
    return f"{statistics.median(ratios):.3f}x (interquartile {quartiles[0]:.2f}-{quartiles[2]:.2f}, {pairs} pairs)"


def main():
    torch.set_num_threads(2)
    preset, options = sys.argv[1], ast.literal_eval(sys.argv[2]) if len(sys.argv) > 2 else {}
    old, new, ratios, pairs = swapped_step(preset, options, "Rotation", cat_rotation(), brope_asr.Rotation)
    print(f"{preset} {options}: cat {old * 1e3:.1f} ms, in place {new * 1e3:.1f} ms, {spread(ratios, pairs)}")


if __name__ == "__main__":
    main()
