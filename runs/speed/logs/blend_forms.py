"""The blend's two exact score forms across lengths: forward+backward of `attend_to_scores` on each form's scores
(one product rescaled entry by entry, or two products summed), time (median of interleaved pairs, 2 threads) and
peak bytes of live tensors (the bench's PeakMemory), at head widths 32 (small) and 128 (base), Sq = Sk = S,
a batch of 1,200 positions per head, and which form `blended_scores` takes there. Then a torch.profiler reading of
each form at the base preset's encoder shape (8, 4, 150, 128): self CPU time by operator over 20 calls.

    python runs/speed/logs/blend_forms.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import brope_asr  # noqa: E402
from tools.bench_brope_asr import PeakMemory  # noqa: E402

torch.set_num_threads(2)
FORMS = {"rescaled": brope_asr.rescaled_product_scores, "summed": brope_asr.summed_product_scores}


def call(shape, scores):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(shape, generator=generator).requires_grad_() for _ in range(3))
    blend = torch.full((shape[1],), 0.5, requires_grad=True)
    temperature = torch.full((shape[1],), shape[-1] ** 0.5, requires_grad=True)
    mask = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool)
    mask[0, ..., shape[2] // 2 :] = False
    leaves = [q, k, v, blend, temperature]

    def run():
        out = brope_asr.attend_to_scores(scores(q, k, blend, temperature), v, mask)
        torch.autograd.grad(out.sum(), leaves)

    return run


def clock(fn, number):
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


for width in (32, 128):
    for length in (20, 75, 150, 300, 500, 750):
        shape = (max(1, 1200 // length), 4, length, width)
        calls = {form: call(shape, scores) for form, scores in FORMS.items()}
        peaks = {}
        for form, fn in calls.items():
            with PeakMemory() as counter:
                fn()
            peaks[form] = counter.peak
        number = max(1, round(0.05 / clock(calls["rescaled"], 1)))
        pairs = [(clock(calls["rescaled"], number), clock(calls["summed"], number)) for _ in range(15)]
        taken = "rescaled" if length * length <= width * 2 * length else "summed"
        print(f"Dh {width:3d}, S {length:3d}, batch {shape[0]:2d}: rescaled {statistics.median(p[0] for p in pairs) * 1e3:7.2f} ms, "
              f"summed {statistics.median(p[1] for p in pairs) * 1e3:7.2f} ms, rescaled "
              f"{statistics.median(s / r for r, s in pairs):.2f}x as fast; peak {peaks['rescaled'] / 2**20:6.1f} / "
              f"{peaks['summed'] / 2**20:6.1f} MiB; blended_scores takes {taken}", flush=True)


shape = (8, 4, 150, 128)
for form, scores in FORMS.items():
    fn = call(shape, scores)
    fn()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(20):
            fn()
    print(f"\n{form} at {shape}, 20 calls of forward and backward:")
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
