"""A training step of bench row 1's models with glibc's default malloc and with `keep_freed_memory`, a fresh
process per sample, the two interleaved (A, B, A, B, ...): mallopt is process-wide, so one process cannot hold both.

    python runs/speed/logs/keep_memory_step.py small 11      # preset, pairs
    python runs/speed/logs/keep_memory_step.py base 11 "{'use_betweenness': True}"
"""
import ast
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def sample(preset: str, options: dict, keep: bool) -> dict:
    """One process: build the model, 3 warm-up steps, then time `steps` steps; ms/step, page faults/step, peak RSS."""
    import torch

    sys.path.insert(0, str(ROOT))
    import brope_asr
    from tools.bench_brope_asr import ours_model, random_clips, random_labels, training_step

    class CPU:
        device = torch.device("cpu")

        def autocast(self):
            return contextlib.nullcontext()

    torch.set_num_threads(2)
    kept = brope_asr.keep_freed_memory() if keep else False
    torch.manual_seed(0)
    config = brope_asr.BRoPEASRConfig.from_preset(preset)
    model, inputs = ours_model(dict(name=preset), options, random_clips(8, 3), random_labels(8, config), CPU())
    step = training_step(model, inputs, CPU())
    steps = 10 if preset == "small" else 3
    for _ in range(3):
        step()
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return dict(kept=kept, ms=1e3 * seconds, faults=(usage.ru_minflt - faults) / steps, peak_mib=usage.ru_maxrss / 1024)


def main():
    if sys.argv[1] == "--sample":
        print(json.dumps(sample(sys.argv[2], ast.literal_eval(sys.argv[3]), sys.argv[4] == "keep")))
        return
    preset, pairs = sys.argv[1], int(sys.argv[2])
    options = sys.argv[3] if len(sys.argv) > 3 else "{}"
    runs = {"default": [], "keep": []}
    for _ in range(pairs):
        for side in runs:
            out = subprocess.run([sys.executable, __file__, "--sample", preset, options, side], capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratios = [a["ms"] / b["ms"] for a, b in zip(runs["default"], runs["keep"])]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{preset} {options}, {pairs} interleaved pairs of processes, 2 threads")
    for side, samples in runs.items():
        print(
            f"  {side:8s} median {statistics.median(s['ms'] for s in samples):7.1f} ms/step, "
            f"{statistics.median(s['faults'] for s in samples):9,.0f} page faults/step, "
            f"peak RSS {statistics.median(s['peak_mib'] for s in samples):6,.0f} MiB (took effect: {samples[0]['kept']})"
        )
    print(f"  default / keep: {statistics.median(ratios):.3f}x (interquartile {quartiles[0]:.2f}-{quartiles[2]:.2f})")


if __name__ == "__main__":
    main()
