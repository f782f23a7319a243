"""torch.profiler of four base training steps (batch 8 x 3 s, fused AdamW, 2 threads): ours (options off) against a
Whisper of the same size cut to 3 s, as bench row 1 builds them. Self CPU time by op.

    python runs/speed/logs/base_step_profile.py
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brope_asr import BRoPEASRConfig  # noqa: E402
from rotation_step import CPU  # noqa: E402
from tools.bench_brope_asr import CLIP_SECONDS, ours_model, random_clips, random_labels, training_step, whisper_model  # noqa: E402

torch.set_num_threads(2)
config = BRoPEASRConfig.from_preset("base")
clips, labels = random_clips(8, CLIP_SECONDS), random_labels(8, config)
steps = {"ours": training_step(*ours_model(dict(name="base"), {}, clips, labels, CPU()), CPU()),
         "Whisper cut to 3 s": training_step(*whisper_model(config, CLIP_SECONDS, clips, labels, CPU()), CPU())}
for step in steps.values():
    step(), step()
for name, step in steps.items():
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(4):
            step()
    print(name)
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
