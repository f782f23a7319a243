"""A small training step with torch's default AdamW on CPU (a loop over the parameters) against fused AdamW
(what train_hf.py's Trainer uses): median of 11 interleaved pairs of 5 steps, 2 threads.

    python runs/speed/logs/adamw_fused_step.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brope_asr import BRoPEASRConfig  # noqa: E402
from rotation_step import CPU  # noqa: E402
from tools.bench_brope_asr import ours_model, random_clips, random_labels  # noqa: E402


def main():
    torch.set_num_threads(2)
    config = BRoPEASRConfig.from_preset("small")
    model, inputs = ours_model(dict(name="small"), {}, random_clips(8, 3), random_labels(8, config), CPU())
    model.train()
    optimizers = {"loop": torch.optim.AdamW(model.parameters(), lr=1e-4),
                  "fused": torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)}

    def seconds(optimizer, steps=5):
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps

    for optimizer in optimizers.values():
        seconds(optimizer, 3)
    times = {name: [] for name in optimizers}
    for _ in range(11):
        for name, optimizer in optimizers.items():
            times[name].append(seconds(optimizer))
    ratio = statistics.median(a / b for a, b in zip(times["loop"], times["fused"]))
    print(", ".join(f"{name} {statistics.median(t) * 1e3:.1f} ms" for name, t in times.items()), f"; loop / fused {ratio:.3f}")


if __name__ == "__main__":
    main()
