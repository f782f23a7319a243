"""Does `train_hf.py --bf16` (bfloat16 autocast) pay on a CPU? Bench row 1's training step (batch 8 of 3-s clips,
options off, fused AdamW) of each preset, ours and Whisper cut to 3 s, and row 2's greedy generate at base: bf16
autocast against float32, timed in interleaved pairs (median of the pairwise ratios), 2 threads, after
`keep_freed_memory` as train_hf.py. Also the first step's loss under each, from the same weights, and our step
with float32 products computed in bf16 by oneDNN without autocast (`torch.set_float32_matmul_precision("medium")`).

    python runs/speed/logs/cpu_bf16.py
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tools import bench_brope_asr as b
import brope_asr

torch.set_num_threads(2)
brope_asr.keep_freed_memory()
runner = b.Runner(torch.device("cpu"), 5)
flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
print(f"{b.cpu_model()}; amx_bf16: {'amx_bf16' in flags}, avx512_bf16: {'avx512_bf16' in flags}; torch {torch.__version__}")


def step(model, inputs, bf16, precision="highest"):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def call():
        torch.set_float32_matmul_precision(precision)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()

    return call


def first_loss(build, bf16):
    model, inputs = build()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model.train(False)(**inputs).loss.item()


def ratio(name, bf16_fn, float_fn, pairs=None):
    speed_up, ours, theirs = runner.paired(bf16_fn, float_fn, pairs=pairs)
    print(f"{name}: bf16 {ours.seconds * 1e3:.1f} ms, float32 {theirs.seconds * 1e3:.1f} ms, "
          f"bf16 {speed_up:.2f}x as fast ({ours.samples} pairs)", flush=True)


for label in ("small", "base"):
    preset = b.FULL.presets[label]
    config = b.BRoPEASRConfig.from_preset(**preset)
    clips, labels = b.random_clips(8, b.CLIP_SECONDS), b.random_labels(8, config)
    builds = {
        "ours": lambda: b.ours_model(preset, {}, clips, labels, runner),
        "Whisper cut to 3 s": lambda: b.whisper_model(config, b.CLIP_SECONDS, clips, labels, runner),
    }
    for name, build in builds.items():
        losses = [first_loss(build, bf16) for bf16 in (False, True)]
        (m32, inputs), (m16, _) = build(), build()
        print(f"train {label}, {name}: loss at the seeded weights, float32 {losses[0]:.4f}, bf16 {losses[1]:.4f}")
        ratio(f"train {label}, batch 8, {name}", step(m16, inputs, True), step(m32, inputs, False))
        if name == "ours":
            speed_up, medium, highest = runner.paired(step(m16, inputs, False, "medium"), step(m32, inputs, False), pairs=None)
            print(f"train {label}, batch 8, ours: float32 products in bf16 (matmul precision medium) {medium.seconds * 1e3:.1f} ms, "
                  f"float32 {highest.seconds * 1e3:.1f} ms, {speed_up:.2f}x as fast ({medium.samples} pairs)", flush=True)
        del m32, m16

config = b.BRoPEASRConfig.from_preset(**b.FULL.presets["base"])
torch.manual_seed(b.SEED)
model = b.BRoPEASRForConditionalGeneration(config).eval()
inputs = b.batch_inputs(b.random_clips(8, b.CLIP_SECONDS), config)
length = dict(max_new_tokens=20, min_new_tokens=20)


def generate(bf16):
    def call():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.generate(**inputs, **length)

    return call


same = (generate(True)() == generate(False)()).float().mean().item()
print(f"generate base: greedy tokens equal under bf16 and float32: {same:.2f} of them (random weights)")
ratio("generate base, batch 8 x 3 s, 20 tokens, greedy", generate(True), generate(False))
