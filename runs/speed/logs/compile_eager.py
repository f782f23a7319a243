"""Does compiling slow the eager step in the same process? Bench row 7's small model and batch: the eager step
before any compile, after `torch.compile` (inductor) has compiled a second copy, and after compiled calls; the
compiled step between. Median of 40 steps each, 2 threads, after `keep_freed_memory`.

    python runs/speed/logs/compile_eager.py
"""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tools import bench_brope_asr as b
import brope_asr
torch.set_num_threads(2)
brope_asr.keep_freed_memory()
sizes = b.FULL
runner = b.Runner(torch.device("cpu"), 5)
label = "small"; preset = sizes.presets[label]
config = b.BRoPEASRConfig.from_preset(**preset)
clips, labels = b.random_clips(8, 3), b.random_labels(8, config)
m1, inputs = b.ours_model(preset, {}, clips, labels, runner)
m2, _ = b.ours_model(preset, {}, clips, labels, runner)
eager = b.training_step(m1, inputs, runner)
def t(fn, n=40):
    s = []
    for _ in range(n):
        a = time.perf_counter(); fn(); s.append(time.perf_counter() - a)
    return statistics.median(s) * 1e3
for _ in range(5): eager()
print(f"eager before compile: {t(eager):.1f} ms", flush=True)
comp = b.training_step(torch.compile(m2, backend="inductor"), inputs, runner)
comp()
print(f"eager after compile, no compiled call since: {t(eager):.1f} ms", flush=True)
print(f"compiled: {t(comp):.1f} ms", flush=True)
print(f"eager after compiled calls: {t(eager):.1f} ms", flush=True)
# inductor's compile workers, if any were left running beside the eager steps
print(subprocess.run(["ps", "-o", "pid,pcpu,rss,cmd", "--ppid", str(os.getpid())], capture_output=True, text=True).stdout[:2000])
