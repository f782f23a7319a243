"""A whole base training step with the decoder's embedding gradient sparse (`nn.Embedding.sparse`) against dense,
toggled between interleaved samples, then one profiled step of each: bench row 1's model and inputs, 2 threads,
after `keep_freed_memory` as the bench and train_hf.py run. Not adopted: autograd adds a sparse gradient to the tied
projection's dense one out of place (torch's InputBuffer accumulates in place only when the incoming gradient is
dense), so the (V, D) zero fill and sum it saves come back as a (V, D) copy.

    python runs/speed/logs/sparse_embedding_step.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import brope_asr  # noqa: E402
from rotation_step import CPU, spread  # noqa: E402
from tools.bench_brope_asr import ours_model, random_clips, random_labels, training_step  # noqa: E402


def main():
    torch.set_num_threads(2)
    brope_asr.keep_freed_memory()
    config = brope_asr.BRoPEASRConfig.from_preset("base")
    model, inputs = ours_model(dict(name="base"), {}, random_clips(8, 3), random_labels(8, config), CPU())
    step, embedding = training_step(model, inputs, CPU()), model.decoder.embed_tokens

    def seconds(sparse: bool) -> float:
        embedding.sparse = sparse
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    for sparse in (False, True, False, True):
        seconds(sparse)
    dense, sparse = zip(*((seconds(False), seconds(True)) for _ in range(21)))
    ratios = [a / b for a, b in zip(dense, sparse)]
    print(f"base: dense {statistics.median(dense) * 1e3:.1f} ms, sparse {statistics.median(sparse) * 1e3:.1f} ms, "
          f"{spread(ratios, len(ratios))}")
    for layout in (False, True):
        embedding.sparse = layout
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            step()
        ops = {event.key: event.self_cpu_time_total / 1e3 for event in profiler.key_averages()}
        print(f"  {'sparse' if layout else 'dense'}, one profiled step: "
              + ", ".join(f"{name} {ops.get(name, 0.0):.1f} ms" for name in ("aten::fill_", "aten::add", "aten::copy_")))


if __name__ == "__main__":
    main()
