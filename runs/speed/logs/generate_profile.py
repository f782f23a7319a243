"""torch.profiler of three greedy generate calls (base preset, batch 8 x 3 s, 20 tokens, 2 threads): ours against a
Whisper of the same size cut to 3 s, as bench row 2 builds them. Self CPU time by op.

    python runs/speed/logs/generate_profile.py
"""
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from brope_asr import BRoPEASRConfig, BRoPEASRForConditionalGeneration, batch_inputs  # noqa: E402
from tools.bench_brope_asr import CLIP_SECONDS, FRAMES_PER_SECOND, random_clips, whisper_features, whisper_like  # noqa: E402


def main():
    torch.set_num_threads(2)
    config = BRoPEASRConfig.from_preset("base")
    clips = random_clips(8, CLIP_SECONDS)
    torch.manual_seed(0)
    model = BRoPEASRForConditionalGeneration(config).eval()
    inputs = batch_inputs(clips, config)
    whisper = whisper_like(config, CLIP_SECONDS * FRAMES_PER_SECOND // 2).eval()
    features = whisper_features(clips, CLIP_SECONDS, config)
    length = dict(max_new_tokens=20, min_new_tokens=20)
    calls = {"ours": lambda: model.generate(**inputs, **length), "Whisper cut to 3 s": lambda: whisper.generate(features, **length)}
    with torch.no_grad():
        for fn in calls.values():
            fn(), fn()
        for name, fn in calls.items():
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for _ in range(3):
                    fn()
            print(name)
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
