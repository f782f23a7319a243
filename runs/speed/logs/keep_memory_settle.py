"""Per-step time and page faults of bench row 1's training step in a fresh process, under glibc's default and with
`keep_freed_memory`: does a process settle by itself?

    python runs/speed/logs/keep_memory_settle.py base default 14; python runs/speed/logs/keep_memory_settle.py base keep 14
"""
import sys, time, resource, contextlib, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import brope_asr
from tools.bench_brope_asr import ours_model, random_clips, random_labels, training_step
class CPU:
    device = torch.device("cpu")
    def autocast(self): return contextlib.nullcontext()
torch.set_num_threads(2)
if sys.argv[2] == "keep": brope_asr.keep_freed_memory()
preset = sys.argv[1]
config = brope_asr.BRoPEASRConfig.from_preset(preset)
model, inputs = ours_model(dict(name=preset), {}, random_clips(8, 3), random_labels(8, config), CPU())
step = training_step(model, inputs, CPU())
out = []
for i in range(int(sys.argv[3])):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; t = time.perf_counter()
    step()
    out.append(f"{(time.perf_counter()-t)*1e3:.0f}ms/{resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}")
print(sys.argv[1:], " ".join(out))
