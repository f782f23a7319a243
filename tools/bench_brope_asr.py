"""Benchmark brope-asr against its anchors on one machine and print one markdown table of ratios.

Every figure is measured in the same run as the anchor it is compared with, so the ratios hold on
the machine that ran them even where the absolute numbers do not carry over. The rows:

1. Training step (forward, backward, AdamW) on a batch of 3-s clips at the small and base presets,
   against a random-init `WhisperForConditionalGeneration` of the same size [2] on its 30-s input,
   against a Whisper whose `max_source_positions` is cut to the clips' length, and ours on the same
   30-s input; all options on (betweenness, blended attention, both inputs) against options off,
   and each option alone against off.
2. `generate`: greedy and beam-4 latency against Whisper's `generate`; cached against uncached.
3. `log_mel_spectrogram` against `WhisperFeatureExtractor`'s numpy and torch paths, one clip at a
   time and as a batch, with the largest absolute difference of the features.
4. bRoPE (RoPE at betweenness-shifted positions) against plain RoPE and against the straightforward
   implementation of the same score (a full pairwise distance matrix and a Python loop over
   positions, `brope_straightforward` below): time and peak memory at 128 to 3000 positions.
5. Model FLOP utilization of the training step at each preset: its model FLOP/s over the `torch.matmul` rate;
   and the model FLOPs of a step with all options on, and with each alone, over options off, and of
   Whisper cut to 3 s over ours: the time ratios row 1 can reach at equal FLOP/s.
6. Blended attention forward+backward at each preset's encoder self-attention shape, against plain
   scaled dot product and against each other exact form of the blend: its scores as one product
   rescaled entry by entry and as two products summed (`blended_scores` takes one of these), as one
   2 Dh-wide product through `scaled_dot_product_attention` (its unfused path), and with v padded
   onto torch's fused kernel.
7. `torch.compile` as `train_hf.py --compile` applies it: the small preset's training step compiled
   against eager in steady state, and the compile's cost (the first step, from an empty inductor
   cache) with the number of steps after which it pays back.

The process first calls `keep_freed_memory`, as `train_hf.py` does, so glibc keeps freed blocks
for reuse instead of faulting them in again at every step (both sides of every ratio run in this
one process); `--default-malloc` leaves glibc's malloc as it is.

With `--device cuda`, a GPU column: the same rows on CUDA with bf16 autocast. `--rows 2,3,6` measures
only those rows (1 and 5 come from the same training steps). Rows 1, 2, 3, 4 (against plain RoPE),
6 and 7 are timed as interleaved pairs: ours and the anchor back to back, the ratio the median of the
pairwise ratios.

`--long-audio RUN_DIR` measures something else, on a trained model: recordings of 1, 5 and 20
minutes (`--minutes` others) made by joining the test split's clips (`--split` another) (seeded order, pauses of 0.3-0.7 s of silence) are
transcribed by `transcribe` in windows cut at pauses; it prints WER against the joined transcripts,
the WER of the same clips decoded one by one, the real-time factor and the process's peak memory.

Every ratio reads "higher is better for us": anchor time / our time (throughput: ours / anchor);
for FLOP utilization our FLOP/s / the matmul FLOP/s; for memory growth, our bytes per position at
the shortest length / at the longest. A target is the smallest ratio wanted, and "met?" compares
the two. Progress goes to stderr, the report to stdout. Models get random weights and clips are
seeded noise: speed does not depend on what is said.

    python -m tools.bench_brope_asr                  # the full table: about 15 minutes on 2 CPU cores
    python -m tools.bench_brope_asr --quick          # tiny sizes, 1 repeat: a smoke run; it checks no speed
    python -m tools.bench_brope_asr --threads 2 --rows 2,3,6   # only the generate, log-mel and attention rows
    python -m tools.bench_brope_asr --threads 2 --repeats 5 --out bench.md
    python -m tools.bench_brope_asr --device cuda    # adds the GPU column (bf16 autocast)
    python -m tools.bench_brope_asr --threads 2 --long-audio runs/small   # long recordings: WER, real-time factor

References (as in brope_asr.py): [2] Radford et al., Whisper, arXiv:2212.04356.
"""

import argparse
import contextlib
import csv
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

from brope_asr import (
    HOP_LENGTH,
    LOG_MEL_FLOOR_DB,
    SAMPLE_RATE,
    BetweennessShift,
    BRoPEASRConfig,
    BRoPEASRForConditionalGeneration,
    Rotation,
    apply_rotary,
    attend_to_scores,
    attention,
    batch_inputs,
    blended_query_key,
    keep_freed_memory,
    load_audio,
    log_mel_spectrogram,
    mel_bins_below,
    rescaled_product_scores,
    rope_frequencies,
    rotary_angles,
    summed_product_scores,
    transcribe,
    window_seconds,
    word_error_rate,
)

SEED = 0
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second, ours and Whisper's
CLIP_SECONDS = 3  # a short utterance: 300 mel frames, 150 encoder positions after stride 2
WHISPER_SECONDS = 30  # Whisper's encoder takes exactly 30-s windows: 3000 frames, 1500 positions [2]
LABEL_TOKENS = 20  # transcript length of a training example, eos included
OPTIONS = {  # the options of row 1's "all options on", each also timed alone to show where their cost goes
    "input both": dict(input_mode="both"),
    "bRoPE": dict(use_betweenness=True),
    "blended attention": dict(blend_attention=True),
}
ALL_OPTIONS = {flag: value for option in OPTIONS.values() for flag, value in option.items()}
ROPE_HEADS, ROPE_HEAD_DIM = 4, 128  # (B=1, H=4, S, Dh=128) queries and keys for the bRoPE-vs-RoPE row
MIN_SAMPLE_S = 0.05  # faster calls repeat inside one timed sample, as timeit does, so timer resolution is moot
SAMPLES_BUDGET_S = 40.0  # a slow call (a 30-s Whisper step) gets fewer samples: as many as fit in this, >= 1
BASELINE_MAX_SECONDS = 30.0  # the straightforward bRoPE is skipped where one forward + backward would take longer
BASELINE_MAX_BYTES = 6e9  # ... or need more memory than this: the machine (24 GB) is shared
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # read once, at numpy's import
# OpenBLAS's threads spin for 2^28 cycles (about 0.1 s) after each call before they sleep: interleaved with
# a 1-ms torch call they took its cores (ours measured 578 clips/s after the numpy path, 1,289-1,583 with
# this), while numpy's own path stayed as fast (175-187 clips/s). 2^4 cycles: they sleep at once.
BLAS_SPIN = {"OPENBLAS_THREAD_TIMEOUT": "4"}


# ------------------------------------------------------------------------------------------- measuring


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensor storages created inside the mode (forward and backward, on any device).

    Every op's outputs pass through `__torch_dispatch__`; each new storage is counted until a
    weakref says it was freed. Views and in-place results (outputs the op's schema marks as aliases)
    allocate nothing, and tensors made before the mode are not counted.
    """

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.counted = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(result.alias_info is not None for result in func._schema.returns):
            return out
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = (storage.device, storage.data_ptr())
                if storage.nbytes() and key not in self.counted:
                    self.counted.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key, nbytes: int):
        self.counted.discard(key)
        self.live -= nbytes


@dataclass(frozen=True)
class Timing:
    """One measurement: median seconds per call, how many samples it is the median of, peak bytes."""

    seconds: float
    samples: int
    peak_bytes: int | None = None


@dataclass(frozen=True)
class Runner:
    """Where and how to measure: the device (CPU in float32, CUDA in bf16 autocast) and the repeats."""

    device: torch.device
    repeats: int

    @property
    def label(self) -> str:
        """The device and precision in words, for the report."""
        return "cuda, bf16 autocast" if self.device.type == "cuda" else "cpu, float32"

    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA (the usual GPU setting); disabled on CPU, which stays float32."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def sync(self):
        """Wait for queued GPU work, so a clock reading covers it; nothing to wait for on CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _clock(self, fn: Callable, number: int) -> float:
        """Seconds per call of `fn`, over `number` calls in a row."""
        start = time.perf_counter()
        for _ in range(number):
            fn()
        self.sync()
        return (time.perf_counter() - start) / number

    def measure(self, fn: Callable, memory: bool = False) -> Timing:
        """Median seconds per call of `fn` after one warm-up call.

        The warm-up call runs under `PeakMemory` when `memory` is set, so the memory figure costs no
        extra call. Then up to `repeats` samples, fewer for a call so slow that they would not fit
        in SAMPLES_BUDGET_S.
        """
        if memory:
            with PeakMemory() as counter:
                fn()
            peak = counter.peak
        else:
            fn()
            peak = None
        self.sync()
        first = self._clock(fn, 1)
        number = max(1, math.ceil(MIN_SAMPLE_S / first))
        wanted = max(1, min(self.repeats, int(SAMPLES_BUDGET_S / first)))
        samples = [first] if number == 1 else []
        while len(samples) < wanted:
            samples.append(self._clock(fn, number))
        return Timing(statistics.median(samples), len(samples), peak)

    def ratio(self, ours: Callable, anchor: Callable, pairs: int = 21) -> float:
        """anchor time / our time as the median of `pairs` ratios, each of the two timed back to back.

        Interleaving (ours, anchor, ours, anchor, ...) puts both sides of each ratio under the same
        machine state; sequential medians of the same ratio moved by about 20% between runs here.
        """
        return self.paired(ours, anchor, pairs)[0]

    def paired(self, ours: Callable, anchor: Callable, pairs: int | None = 21) -> tuple[float, Timing, Timing]:
        """`ratio`, with the median time of each side over its pairs.

        `pairs` None: as many pairs as fit in 2 x SAMPLES_BUDGET_S, 3 to 21, from the warm-up's times.
        Returns: (median of anchor / ours over the pairs, ours' Timing, the anchor's Timing).
        """
        self.sync()
        first = [self._clock(fn, 1) for fn in (ours, anchor)]  # warm-up, and the calls' cost
        if pairs is None:
            pairs = max(3, min(21, int(2 * SAMPLES_BUDGET_S / sum(first))))
        number = max(1, math.ceil(MIN_SAMPLE_S / first[0]))
        times = []
        for _ in range(pairs):
            times.append((self._clock(ours, number), self._clock(anchor, number)))
        ratio = statistics.median(anchor_seconds / ours_seconds for ours_seconds, anchor_seconds in times)
        return ratio, *(Timing(statistics.median(side), pairs, None) for side in zip(*times))


@dataclass
class Row:
    """One line of the table. `ratio` is None where the anchor was skipped; `target` None where the
    row has no target."""

    section: int
    name: str
    ours: str
    anchor: str
    ratio: float | None
    target: float | None = None
    gpu: str = ""

    def met(self) -> str:
        """'yes', '**no**', or '' where there is no target or no ratio."""
        if self.target is None or self.ratio is None:
            return ""
        return "yes" if self.ratio >= self.target else "**no**"

    def ratio_text(self) -> str:
        """The ratio to 2 decimals, or to as many more as it takes for a miss not to read as its target
        ("0.998" against 1, not "1.00"); '' where there is no ratio."""
        if self.ratio is None:
            return ""
        digits = 2
        while self.target is not None and digits < 6 and (round(self.ratio, digits) >= self.target) != (self.ratio >= self.target):
            digits += 1
        return f"{self.ratio:.{digits}f}"


def seconds_text(timing: Timing, repeats: int) -> str:
    """'12.3 ms', with the sample count when a slow call got fewer than `repeats`."""
    s = timing.seconds
    text = f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} µs"
    return text if timing.samples >= repeats else f"{text} (n={timing.samples})"


def progress(text: str):
    """One line on stderr, so a run of many minutes shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def bytes_text(nbytes: float) -> str:
    """'1.5 MiB' or '2.25 GiB'."""
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


# -------------------------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """What one run measures at: the README table's sizes, or tiny ones for --quick."""

    presets: dict[str, dict]  # label -> `BRoPEASRConfig.from_preset` arguments, for row 1
    large: str  # the label rows 2 and 5 use
    batch: int  # clips per batch
    new_tokens: int  # tokens `generate` writes, forced so an untrained model's early eos cannot cut it short
    rope_lengths: tuple[int, ...]
    matmul_size: int
    compile_backend: str  # row 7's torch.compile backend


FULL = Sizes(
    presets={"small": dict(name="small"), "base": dict(name="base")},
    large="base",
    batch=8,
    new_tokens=20,
    rope_lengths=(128, 512, 1500, 3000),
    matmul_size=2048,
    compile_backend="inductor",  # what train_hf.py --compile gets: transformers' default
)
QUICK = Sizes(
    presets={
        "tiny": dict(
            name="small",
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_target_positions=32,
        )
    },
    large="tiny",
    batch=2,
    new_tokens=4,
    rope_lengths=(64, 128),
    matmul_size=256,
    compile_backend="aot_eager",  # traces forward and backward as inductor does, without generating code: seconds
)


def random_clips(count: int, seconds: float) -> list[torch.Tensor]:
    """`count` seeded noise clips of `seconds` at 16 kHz, each (N,) float32."""
    generator = torch.Generator().manual_seed(SEED)
    return [0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=generator) for _ in range(count)]


def random_labels(batch: int, config: BRoPEASRConfig) -> torch.Tensor:
    """(B, LABEL_TOKENS) seeded token ids ending with eos, none of them special."""
    generator = torch.Generator().manual_seed(SEED)
    labels = torch.randint(config.eos_token_id + 1, config.vocab_size, (batch, LABEL_TOKENS), generator=generator)
    labels[:, -1] = config.eos_token_id
    return labels


def whisper_like(config: BRoPEASRConfig, source_positions: int) -> WhisperForConditionalGeneration:
    """A random-init Whisper of the same size as `config` that takes 2 x `source_positions` mel frames.

    Whisper's encoder accepts exactly that many frames (1500 positions = 30 s after its stride-2
    convolution); the tokens and dropout are ours so both models do the same work.
    """
    whisper_config = WhisperConfig(
        vocab_size=config.vocab_size,
        num_mel_bins=config.num_mel_bins,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        decoder_attention_heads=config.decoder_attention_heads,
        encoder_ffn_dim=config.encoder_ffn_dim,
        decoder_ffn_dim=config.decoder_ffn_dim,
        max_source_positions=source_positions,
        max_target_positions=config.max_target_positions,
        dropout=config.dropout,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        decoder_start_token_id=config.decoder_start_token_id,
    )
    return WhisperForConditionalGeneration(whisper_config)


def whisper_features(clips: list[torch.Tensor], seconds: float, config: BRoPEASRConfig) -> torch.Tensor:
    """(B, M, 100 x seconds) log-mel of the clips zero-padded to `seconds`, as Whisper's extractor pads."""
    samples = int(seconds * SAMPLE_RATE)
    padded = torch.stack([F.pad(clip, (0, samples - len(clip))) for clip in clips])
    return log_mel_spectrogram(padded, n_mels=config.num_mel_bins)


def on_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The same dict with every tensor moved to `device`."""
    return {name: value.to(device) for name, value in inputs.items()}


# ----------------------------------------------------------------------------------------- 1 training


def training_step(model: nn.Module, inputs: dict[str, torch.Tensor], runner: Runner) -> Callable[[], None]:
    """One training step of `model` on `inputs` (labels included): forward, backward, AdamW update.

    AdamW is the fused one, as `train_hf.py`'s Trainer runs it (transformers' default `adamw_torch_fused`);
    torch's default on CPU, a loop over the parameters, took 18% of a small step's profile.
    """
    model.to(runner.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with runner.autocast():
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()

    return step


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of CPU's fused attention, by torch's formula for the CUDA kernels (arguments are shapes)."""
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of its backward, likewise."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


def model_flops(model: nn.Module, inputs: dict[str, torch.Tensor], runner: Runner) -> int:
    """FLOPs of one forward + backward (the optimizer is not model FLOPs), by `FlopCounterMode`.

    torch's counter knows matmuls, convolutions and the CUDA attention kernels; CPU's fused
    attention is added here with the same formulas, so attention is counted on every device.
    """
    aten = torch.ops.aten
    cpu_attention = {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
    }
    with FlopCounterMode(display=False, custom_mapping=cpu_attention) as counter:
        with runner.autocast():
            loss = model(**inputs).loss
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_rate(runner: Runner, size: int) -> float:
    """FLOP/s of `torch.matmul` on two (size, size) matrices: fp32 on CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if runner.device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=runner.device, dtype=dtype) for _ in range(2))
    return 2 * size**3 / runner.measure(lambda: torch.matmul(a, b)).seconds


def ours_model(
    preset: dict, options: dict, clips: list[torch.Tensor], labels: torch.Tensor, runner: Runner
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A seeded brope-asr model of `preset` with `options`, and its training inputs on the runner's device.

    Returns: (model, inputs), inputs being `batch_inputs` of the clips plus `labels`.
    """
    torch.manual_seed(SEED)
    config = BRoPEASRConfig.from_preset(**preset, **options)
    inputs = {**batch_inputs(clips, config), "labels": labels}
    return BRoPEASRForConditionalGeneration(config), on_device(inputs, runner.device)


def whisper_model(
    config: BRoPEASRConfig, seconds: int, clips: list[torch.Tensor], labels: torch.Tensor, runner: Runner
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A seeded Whisper of `config`'s size taking `seconds` of audio, and its training inputs on the device.

    Returns: (model, inputs), inputs being the log-mel of the clips padded to `seconds` plus `labels`.
    """
    torch.manual_seed(SEED)
    model = whisper_like(config, seconds * FRAMES_PER_SECOND // 2)
    inputs = {"input_features": whisper_features(clips, seconds, config), "labels": labels}
    return model, on_device(inputs, runner.device)


def step_speed(timing: Timing, batch: int, repeats: int) -> str:
    """'131.52 utt/s (60.8 ms/step)' for a training step on `batch` clips."""
    return f"{batch / timing.seconds:.2f} utt/s ({seconds_text(timing, repeats)}/step)"


def training_rows(runner: Runner, sizes: Sizes) -> list[Row]:
    """Row 1 and row 5 (FLOP utilization) at every preset."""
    rows, batch, repeats = [], sizes.batch, runner.repeats
    for label, preset in sizes.presets.items():
        progress(f"{runner.label}: training steps at {label}")
        config = BRoPEASRConfig.from_preset(**preset)
        labels = random_labels(batch, config)
        clips = random_clips(batch, CLIP_SECONDS)
        long_clips = [F.pad(clip, (0, (WHISPER_SECONDS - CLIP_SECONDS) * SAMPLE_RATE)) for clip in clips]

        built = {  # every model of the comparisons is built once; each ratio times its two steps interleaved
            "off": ours_model(preset, {}, clips, labels, runner),
            "on": ours_model(preset, ALL_OPTIONS, clips, labels, runner),
            "ours 30 s": ours_model(preset, {}, long_clips, labels, runner),
            "Whisper 30 s": whisper_model(config, WHISPER_SECONDS, clips, labels, runner),
            "Whisper 3 s": whisper_model(config, CLIP_SECONDS, clips, labels, runner),
            **{name: ours_model(preset, option, clips, labels, runner) for name, option in OPTIONS.items()},
        }
        flops = {name: model_flops(*built[name], runner) for name in ("off", "on", *OPTIONS, "Whisper 3 s")}
        step = {name: training_step(model, inputs, runner) for name, (model, inputs) in built.items()}
        del built
        comparisons = [  # (what, ours, anchor, target ratio): the ratio is anchor time / our time
            ("ours 3-s clips vs Whisper 30-s input", "off", "Whisper 30 s", 10.0),
            ("ours vs Whisper cut to 3 s (150 positions)", "off", "Whisper 3 s", 1.0),
            ("ours vs Whisper, both on 30-s input", "ours 30 s", "Whisper 30 s", 1.0),
            ("all options on vs off (3 s; ≥ 0.85 = at most 18% cost)", "on", "off", 0.85),
            *((f"{name} alone vs off (3 s)", name, "off", None) for name in OPTIONS),
        ]
        times = {}  # each step's time in its latest pair
        for what, ours, anchor, target in comparisons:
            ratio, times[ours], times[anchor] = runner.paired(step[ours], step[anchor], pairs=None)
            rows.append(Row(1, f"train {label}, batch {batch}: {what} (ratio: median of interleaved pairs)",
                            step_speed(times[ours], batch, repeats), step_speed(times[anchor], batch, repeats), ratio, target))
        del step
        peak = matmul_rate(runner, sizes.matmul_size)
        achieved = flops["off"] / times["off"].seconds
        rows.append(
            Row(
                5,
                f"model FLOP utilization, train {label} 3-s clips (options off)",
                f"{achieved / 1e9:.1f} GFLOP/s ({flops['off'] / 1e9:.1f} GFLOP fwd+bwd per step)",
                f"{peak / 1e9:.1f} GFLOP/s torch.matmul {sizes.matmul_size}²",
                achieved / peak,
                0.40,
            )
        )
        # Model FLOPs bound a time ratio: at the same FLOP/s, "on" takes off/on of the time, and Whisper cut
        # to 3 s takes its FLOPs over ours; a time ratio beats these only by running at more FLOP/s.
        ceilings = [  # (what, ours, anchor): the ratio is anchor FLOPs / ours, as row 1's is anchor time / ours
            ("ours vs Whisper cut to 3 s (Whisper / ours: the time ratio at equal FLOP/s)", "off", "Whisper 3 s"),
            *((f"{'all options on' if name == 'on' else name} vs off (off / on: the time ratio at equal FLOP/s)", name, "off")
              for name in ("on", *OPTIONS)),
        ]
        for what, ours, anchor in ceilings:
            rows.append(Row(5, f"model FLOPs per step, train {label}: {what}", f"{flops[ours] / 1e9:.2f} GFLOP",
                            f"{flops[anchor] / 1e9:.2f} GFLOP", flops[anchor] / flops[ours], None))
    return rows


# ----------------------------------------------------------------------------------------- 2 generate


def generate_rows(runner: Runner, sizes: Sizes) -> list[Row]:
    """Row 2 at the large preset: greedy and beam-4 latency of a batch of 3-s clips; cached vs not."""
    progress(f"{runner.label}: generate at {sizes.large}")
    config = BRoPEASRConfig.from_preset(**sizes.presets[sizes.large])
    clips = random_clips(sizes.batch, CLIP_SECONDS)
    torch.manual_seed(SEED)
    model = BRoPEASRForConditionalGeneration(config).to(runner.device).eval()
    inputs = on_device(batch_inputs(clips, config), runner.device)
    whispers = {}
    for seconds, anchor in ((WHISPER_SECONDS, "Whisper 30-s input"), (CLIP_SECONDS, "Whisper cut to 3 s")):
        features = whisper_features(clips, seconds, config).to(runner.device)
        whispers[anchor] = (whisper_like(config, seconds * FRAMES_PER_SECOND // 2).to(runner.device).eval(), features)
    length = dict(max_new_tokens=sizes.new_tokens, min_new_tokens=sizes.new_tokens)

    def no_grad(fn: Callable) -> Callable[[], None]:
        def call():
            with torch.no_grad(), runner.autocast():
                fn()

        return call

    rows = []
    name = f"generate {sizes.large}, batch {sizes.batch} × 3 s, {sizes.new_tokens} tokens"
    for beams, search in ((1, "greedy"), (4, "beam-4")):
        ours = no_grad(lambda: model.generate(**inputs, num_beams=beams, **length))
        anchors = {
            anchor: no_grad(lambda whisper=whisper, features=features: whisper.generate(features, num_beams=beams, **length))
            for anchor, (whisper, features) in whispers.items()
        }
        if beams == 1:
            anchors["ours uncached"] = no_grad(lambda: model.generate(**inputs, use_cache=False, **length))
        for anchor, theirs in anchors.items():
            ratio, our_timing, their_timing = runner.paired(ours, theirs, pairs=None)
            label = "ours cached vs uncached" if anchor == "ours uncached" else f"ours vs {anchor}"
            rows.append(
                Row(
                    2,
                    f"{name}, {search}: {label} (ratio: median of interleaved pairs)",
                    seconds_text(our_timing, 3),
                    seconds_text(their_timing, 3),
                    ratio,
                    1.2 if anchor == "Whisper cut to 3 s" else None,
                )
            )
    return rows


# ------------------------------------------------------------------------------------------ 3 log-mel


def log_mel_rows(runner: Runner, sizes: Sizes) -> list[Row]:
    """Row 3: clips per second of 3-s clips, one at a time and batched, against both Whisper paths.

    Whisper's `__call__` pads to 30 s and then calls one of two methods, torch's when torch is
    installed; both are called directly here on the same unpadded (B, N) array ours gets.
    """
    progress(f"{runner.label}: log-mel")
    clips = torch.stack(random_clips(sizes.batch, CLIP_SECONDS)).numpy()
    extractor = WhisperFeatureExtractor(feature_size=80)
    device = runner.device

    def ours(batch: np.ndarray) -> np.ndarray:
        return log_mel_spectrogram(torch.from_numpy(batch).to(device)).cpu().numpy()

    paths = {
        "ours": ours,
        "WhisperFeatureExtractor numpy path": lambda batch: extractor._np_extract_fbank_features(batch, "cpu"),
        "WhisperFeatureExtractor torch path": lambda batch: extractor._torch_extract_fbank_features(batch, device.type),
    }
    rows, count = [], len(clips)
    for mode in ("one clip at a time", f"batch of {count}"):
        per_clip = mode.startswith("one")
        calls, features = {}, {}
        for path, fn in paths.items():

            def call(fn=fn):
                return [fn(clip[None]) for clip in clips] if per_clip else fn(clips)

            calls[path] = call
            features[path] = np.concatenate(call()) if per_clip else call()
        for anchor in [path for path in paths if path != "ours"]:
            ratio, timing, theirs = runner.paired(calls["ours"], calls[anchor])
            difference = np.abs(features["ours"] - features[anchor]).max()
            rows.append(
                Row(
                    3,
                    f"log-mel 3-s clips, {mode}: ours vs {anchor} (ratio: median of 21 interleaved pairs)",
                    f"{count / timing.seconds:,.0f} clips/s (max abs diff {difference:.1e})",
                    f"{count / theirs.seconds:,.0f} clips/s",
                    ratio,
                    5.0 if "numpy" in anchor else 1.0,
                )
            )
    return rows


# -------------------------------------------------------------------------------------------- 4 bRoPE


def rope(q: torch.Tensor, k: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain RoPE at integer positions 0 .. S-1, cos/sin shared by q and k as in the model."""
    angles = rotary_angles(torch.arange(q.shape[-2], device=q.device), inv_freq)
    return Rotation.apply(q, angles), Rotation.apply(k, angles)


def brope(q, k, v, shift: BetweennessShift, inv_freq) -> tuple[torch.Tensor, torch.Tensor]:
    """bRoPE as the encoder runs it: positions 0 .. S-1 plus the betweenness shift of the values."""
    positions = torch.arange(q.shape[-2], device=q.device) + shift(v, causal=False, valid=None)
    angles = rotary_angles(positions, inv_freq)
    return Rotation.apply(q, angles), Rotation.apply(k, angles)


def brope_straightforward(q, k, v, shift: BetweennessShift, inv_freq, eps: float = 1e-6):
    """The baseline of row 4: bRoPE as first written, not used by the model.

    The full (S, S) matrix of pairwise distances between the projected values (concatenated over
    heads), then a Python loop over positions reading each token's triple (j-k, j, j+k) from it, then
    RoPE at exact angles. Same score and eps as `betweenness_score`, so the outputs equal `brope`'s.
    """
    z = shift.proj(v).transpose(1, 2).flatten(2)  # (B, S, H P)
    distance = ((z[:, :, None, :] - z[:, None, :, :]).square().sum(-1) + eps**2).sqrt()  # (B, S, S)
    offset, length = shift.offset, z.shape[-2]
    scores = []
    for j in range(length):
        if offset <= j < length - offset:
            a, c = j - offset, j + offset
            scores.append(distance[:, a, c] / (distance[:, a, j] + distance[:, j, c]))
        else:
            scores.append(distance.new_zeros(distance.shape[:1]))
    score = torch.stack(scores, dim=-1)[:, None]  # (B, 1, S)
    positions = torch.arange(length, device=q.device) + shift.max_shift * torch.tanh(shift.gate) * score
    return apply_rotary(q, positions, inv_freq), apply_rotary(k, positions, inv_freq)


def baseline_skip_reason(measured: list[tuple[int, float, int]], length: int) -> str | None:
    """Why the straightforward bRoPE is not run at `length`, or None to run it.

    Extrapolates from the sizes already measured, `measured` = [(S, forward+backward seconds, peak
    bytes)]: time as S^3 (its loop's backward writes an (S, S) gradient per position) until two sizes
    give a fitted exponent, memory as S^2 (the distance matrix).
    """
    if not measured:
        return None
    size, seconds, peak = measured[-1]
    exponent = 3.0
    if len(measured) > 1:
        previous_size, previous_seconds, _ = measured[-2]
        exponent = max(2.0, math.log(seconds / previous_seconds) / math.log(size / previous_size))
    need_seconds, need_bytes = seconds * (length / size) ** exponent, peak * (length / size) ** 2
    if need_seconds <= BASELINE_MAX_SECONDS and need_bytes <= BASELINE_MAX_BYTES:
        return None
    return f"skipped: would need ~{bytes_text(need_bytes)} and ~{need_seconds:,.0f} s (extrapolated from S={size})"


def rope_rows(runner: Runner, sizes: Sizes) -> list[Row]:
    """Row 4: forward and forward+backward time, and forward+backward peak memory, at each length."""
    config = BRoPEASRConfig(
        d_model=ROPE_HEADS * ROPE_HEAD_DIM,
        encoder_attention_heads=ROPE_HEADS,
        decoder_attention_heads=ROPE_HEADS,
        use_betweenness=True,
    )
    torch.manual_seed(SEED)
    shift = BetweennessShift(config, ROPE_HEADS).to(runner.device)
    nn.init.constant_(shift.gate, 0.5)  # the model starts at gate 0, where the shift is 0 and proves nothing
    inv_freq = rope_frequencies(ROPE_HEAD_DIM, config.rope_theta, runner.device)
    rows, repeats = [], runner.repeats
    measured = []  # (S, forward+backward seconds, peak bytes) of the straightforward version
    per_position = {}  # S -> our forward+backward peak bytes / S

    def cell(timing: Timing) -> str:
        text = seconds_text(timing, repeats)
        return text if timing.peak_bytes is None else f"{text}, peak {bytes_text(timing.peak_bytes)}"

    for length in sizes.rope_lengths:
        progress(f"{runner.label}: bRoPE at S={length}")
        q, k, v = (
            torch.randn(1, ROPE_HEADS, length, ROPE_HEAD_DIM, device=runner.device, requires_grad=True)
            for _ in range(3)
        )
        with_shift = [q, k, v, *shift.parameters()]
        variants = {
            "RoPE": (lambda: rope(q, k, inv_freq), [q, k]),
            "ours": (lambda: brope(q, k, v, shift, inv_freq), with_shift),
            "straightforward": (lambda: brope_straightforward(q, k, v, shift, inv_freq), with_shift),
        }
        skip_reason = baseline_skip_reason(measured, length)
        if skip_reason is not None:
            del variants["straightforward"]
        forward, backward, outputs, calls = {}, {}, {}, {}
        for variant, (fn, leaves) in variants.items():

            def infer(fn=fn):
                with torch.no_grad(), runner.autocast():
                    return fn()

            def train(fn=fn, leaves=leaves):
                with runner.autocast():
                    rotated = fn()
                torch.autograd.grad(sum(x.float().sum() for x in rotated), leaves)

            with torch.no_grad():
                outputs[variant] = fn()  # in float32 even under autocast: this is the equality check
            forward[variant] = runner.measure(infer)
            backward[variant] = runner.measure(train, memory=True)
            calls[variant] = (infer, train)
        # The ratios against plain RoPE, the row's target, come from interleaved pairs.
        ratios = {
            "fwd": runner.ratio(calls["ours"][0], calls["RoPE"][0]),
            "fwd+bwd": runner.ratio(calls["ours"][1], calls["RoPE"][1]),
        }
        if skip_reason is None:
            # The baseline must compute what ours computes, or the comparison means nothing.
            torch.testing.assert_close(outputs["straightforward"], outputs["ours"], rtol=1e-4, atol=1e-4)
            measured.append((length, backward["straightforward"].seconds, backward["straightforward"].peak_bytes))
        per_position[length] = backward["ours"].peak_bytes / length

        for pass_name, timings in (("fwd", forward), ("fwd+bwd", backward)):
            ours, plain = timings["ours"], timings["RoPE"]
            rows.append(
                Row(
                    4,
                    f"bRoPE S={length} {pass_name}: ours vs plain RoPE (≥ 0.5 = at most 2×; ratio: median of 21 interleaved pairs)",
                    cell(ours),
                    cell(plain),
                    ratios[pass_name],
                    0.5,
                )
            )
            baseline = timings.get("straightforward")
            rows.append(
                Row(
                    4,
                    f"bRoPE S={length} {pass_name}: ours vs straightforward (S×S distances + loop)",
                    cell(ours),
                    skip_reason if baseline is None else cell(baseline),
                    None if baseline is None else baseline.seconds / ours.seconds,
                )
            )
    first, last = sizes.rope_lengths[0], sizes.rope_lengths[-1]
    rows.append(
        Row(
            4,
            f"bRoPE fwd+bwd peak memory per position, S={last} vs S={first} (≥ 0.8 = linear)",
            f"{per_position[last] / 1024:.1f} KiB at S={last}",
            f"{per_position[first] / 1024:.1f} KiB at S={first}",
            per_position[first] / per_position[last],
            0.8,
        )
    )
    return rows


# -------------------------------------------------------------------------------- 6 blended attention


def blended_unfused(q, k, v, mask, is_causal, blend, temperature) -> torch.Tensor:
    """The blend through `scaled_dot_product_attention` as one product of concatenated 2 Dh vectors
    (`blended_query_key`, scale 1): on the CPU its unfused path, since v is Dh wide. What `attention` ran
    on the CPU before it wrote the blend's scores out (and still runs on CUDA)."""
    q, k = blended_query_key(q, k, blend, temperature)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=1.0)


def blended_padded(q, k, v, mask, is_causal, blend, temperature) -> torch.Tensor:
    """The blend with v zero-padded to the concatenated queries' 2 Dh, and the output cut back.

    torch's fused CPU kernel takes only equal query, key and value widths; padding v is the one way
    onto it for the same function; this anchor measures whether it pays.
    """
    q, k = blended_query_key(q, k, blend, temperature)
    out = F.scaled_dot_product_attention(q, k, F.pad(v, (0, v.shape[-1])), attn_mask=mask, is_causal=is_causal, scale=1.0)
    return out[..., : v.shape[-1]]


def attention_rows(runner: Runner, sizes: Sizes) -> list[Row]:
    """Row 6: blended attention forward+backward at each preset's encoder self-attention on a batch
    of 3-s clips, against plain scaled dot product and each exact form of the blend: one product rescaled,
    two products summed (ours is whichever keeps less for backward), the concatenated product through the
    SDPA call's unfused path, and v padded onto the fused kernel."""
    rows = []
    for label, preset in sizes.presets.items():
        progress(f"{runner.label}: blended attention at {label}")
        config = BRoPEASRConfig.from_preset(**preset)
        heads = config.encoder_attention_heads
        shape = (sizes.batch, heads, CLIP_SECONDS * FRAMES_PER_SECOND // config.downsampling_factor, config.d_model // heads)
        generator = torch.Generator().manual_seed(SEED)
        q, k, v = (torch.randn(shape, generator=generator).to(runner.device).requires_grad_() for _ in range(3))
        blend = torch.full((heads,), 0.5, device=runner.device, requires_grad=True)
        temperature = torch.full((heads,), shape[-1] ** 0.5, device=runner.device, requires_grad=True)
        mask = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool, device=runner.device)
        mask[0, ..., shape[2] // 2 :] = False  # one clip half as long: the padded batch a step sees
        variants = {
            "blended": (lambda: attention(q, k, v, mask, False, blend, temperature), [q, k, v, blend, temperature]),
            "plain": (lambda: attention(q, k, v, mask), [q, k, v]),
            **{
                form: (lambda scores=scores: attend_to_scores(scores(q, k, blend, temperature), v, mask), [q, k, v, blend, temperature])
                for form, scores in (("rescaled", rescaled_product_scores), ("summed", summed_product_scores))
            },
            "unfused": (lambda: blended_unfused(q, k, v, mask, False, blend, temperature), [q, k, v, blend, temperature]),
            "padded": (lambda: blended_padded(q, k, v, mask, False, blend, temperature), [q, k, v, blend, temperature]),
        }
        with torch.no_grad():
            for anchor in ("rescaled", "summed", "unfused", "padded"):
                torch.testing.assert_close(variants[anchor][0](), variants["blended"][0](), rtol=1e-4, atol=1e-5)
        calls = {}
        for variant, (fn, leaves) in variants.items():

            def train(fn=fn, leaves=leaves):
                with runner.autocast():
                    out = fn()
                torch.autograd.grad(out.float().sum(), leaves)

            calls[variant] = train
        for anchor, what in (
            ("plain", "plain scaled dot product"),
            ("rescaled", "the blend's scores as one product rescaled entry by entry"),
            ("summed", "the blend's scores as the sum of two products"),
            ("unfused", "the blend as one 2 Dh-wide product through the SDPA call's unfused path"),
            ("padded", "the blend with v padded onto the fused kernel"),
        ):
            ratio, ours, theirs = runner.paired(calls["blended"], calls[anchor])
            rows.append(
                Row(
                    6,
                    f"blended attention fwd+bwd, {label} encoder self-attention {tuple(shape)}: ours vs {what} (ratio: median of 21 interleaved pairs)",
                    seconds_text(ours, 3),
                    seconds_text(theirs, 3),
                    ratio,
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------- table


def limit_blas_threads(threads: int, argv: list[str]):
    """Make numpy's BLAS use `threads` threads too, and let them sleep as soon as a call ends (`BLAS_SPIN`),
    re-executing this script once if it does not yet.

    A BLAS library reads its thread count from the environment when numpy loads it, so a running
    process cannot change it. Left alone, the numpy path of row 3 ran 6x slower than with one
    thread on a busy 2-core machine (its BLAS threads waited on each other), which inflated that ratio.
    """
    wanted = {**{name: str(threads) for name in BLAS_THREAD_VARIABLES}, **BLAS_SPIN}
    if all(os.environ.get(name) == value for name, value in wanted.items()):
        return
    os.environ.update(wanted)
    os.execv(sys.executable, [sys.executable, "-m", __spec__.name, *argv])  # as it was started: a module


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------- 7 compile


@contextlib.contextmanager
def empty_inductor_cache():
    """Inside the block, inductor caches what it compiles in a new empty folder, deleted after: a first run's compile."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def payback_steps(first_seconds: float, eager_seconds: float, compiled_seconds: float) -> float:
    """Steps after which a compiled run has caught up with an eager one: the first compiled step's extra time over
    an eager step, over the time each later step saves; inf when a compiled step saves nothing."""
    saved = eager_seconds - compiled_seconds
    return (first_seconds - eager_seconds) / saved if saved > 0 else math.inf


def compile_rows(runner: Runner, sizes: Sizes) -> list[Row]:
    """Row 7: the first preset's training step compiled as `train_hf.py --compile` compiles it, against eager.

    transformers' Trainer (through accelerate) hands the model to `torch.compile` with its default backend,
    inductor, and default mode; the optimizer stays eager, as here. The first compiled step pays for the
    compile from an empty inductor cache, as a first run does (later runs reuse the cache); the steady
    state is timed in interleaved pairs. Every batch here has one shape, compile's best case: the default
    run's batches each have their own lengths, and dynamo compiles again for new ones (README, Performance).
    """
    import train_hf  # for its default number of steps; imported here, as it loads `datasets`

    label, preset = next(iter(sizes.presets.items()))
    progress(f"{runner.label}: torch.compile ({sizes.compile_backend}) at {label}")
    config = BRoPEASRConfig.from_preset(**preset)
    clips, labels = random_clips(sizes.batch, CLIP_SECONDS), random_labels(sizes.batch, config)
    eager_model, inputs = ours_model(preset, {}, clips, labels, runner)
    compiled_model, _ = ours_model(preset, {}, clips, labels, runner)
    eager = training_step(eager_model, inputs, runner)
    with empty_inductor_cache():
        torch._dynamo.reset()  # nothing compiled earlier in this process is reused
        compiled = training_step(torch.compile(compiled_model, backend=sizes.compile_backend), inputs, runner)
        first = runner._clock(compiled, 1)  # the compile, then the step
        ratio, compiled_timing, eager_timing = runner.paired(compiled, eager, pairs=None)
    payback = payback_steps(first, eager_timing.seconds, compiled_timing.seconds)
    default_steps = train_hf.DEFAULT_MAX_STEPS
    backend = f"torch.compile ({sizes.compile_backend}{', as train_hf.py --compile' if sizes.compile_backend == 'inductor' else ''})"
    return [
        Row(7, f"train {label}, batch {sizes.batch}, 3 s: {backend} vs eager, one batch shape (ratio: median of interleaved pairs)",
            step_speed(compiled_timing, sizes.batch, runner.repeats), step_speed(eager_timing, sizes.batch, runner.repeats), ratio),
        Row(7, f"train {label}: the compile, the first compiled step from an empty inductor cache, and when it pays back "
            f"at the speed-up above (ratio: the default run's steps / those)",
            f"first step {first:.1f} s; " + ("never pays back (no faster)" if math.isinf(payback) else f"pays back after {payback:,.0f} steps"),
            f"eager step {seconds_text(eager_timing, runner.repeats)}; the default run: {default_steps:,} steps",
            default_steps / payback),
    ]


SECTIONS = {  # row numbers -> what measures them (the training step gives rows 1 and 5)
    (1, 5): training_rows,
    (2,): generate_rows,
    (3,): log_mel_rows,
    (4,): rope_rows,
    (6,): attention_rows,
    (7,): compile_rows,
}


def measure_all(runner: Runner, sizes: Sizes, rows_wanted: set[int] | None = None) -> list[Row]:
    """Every row on one device (or those of `rows_wanted`), in the README table's order."""
    rows = []
    for sections, measure in SECTIONS.items():
        if rows_wanted is None or rows_wanted & set(sections):
            rows += measure(runner, sizes)
    return sorted(rows, key=lambda row: row.section)


def render(rows: list[Row], header: list[str]) -> str:
    """The header lines and one markdown table."""
    lines = header + [
        "",
        "| # | row | ours | anchor | ratio | target | met? | GPU ratio (bf16) |",
        "|---|---|---|---|--:|--:|---|--:|",
    ]
    for row in rows:
        target = "" if row.target is None else f"≥ {row.target:g}"
        lines.append(
            f"| {row.section} | {row.name} | {row.ours} | {row.anchor} | {row.ratio_text()} | {target} | {row.met()} | {row.gpu} |"
        )
    return "\n".join(lines) + "\n"


def padding_report(data_dir: str = "data", batch_size: int = 16, epochs: int = 2) -> str:
    """The share of padding in training batches for each way of batching, with and without joined words; markdown.

    Batches come from `epochs` of the training split drawn by: `RandomSampler` (plain random
    batches; the collator draws each example's plan), transformers' `LengthGroupedSampler` on
    each row's duration (`--group-by-length`: it only knows the single words' lengths, as words
    are joined later), and `train_hf.PlannedBatches` with 4 batches sorted together (plans drawn
    first, so joined words and non-speech are sorted by their real length), all through `train_hf`'s collator at the default
    non-speech share; and the padding the model processes when each batch runs in the default
    `--micro-batches` passes (`train_hf.length_parts`).
    """
    import train_hf
    from torch.utils.data import RandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    args = train_hf.parse_args(["--data-dir", data_dir, "--test-split", ""])
    split = train_hf.load_splits(args)["train"]
    tokenizer = train_hf.build_tokenizer([train_hf.normalize_text(text) for text in split["text"]])
    config = BRoPEASRConfig.from_preset("small", vocab_size=len(tokenizer))
    train = train_hf.prepare_split(split, "train", tokenizer, config, skip_bad=True, decode=False)
    train = train.add_column("augment", [True] * len(train))
    rows, pools, reader = train.to_list(), train_hf.word_pools(train), train_hf.ClipReader()
    lines = [f"{data_dir}: {len(rows)} training clips, batch {batch_size}, {epochs} epochs", "",
             f"| batches | words joined (probability) | padding, share of mel frames | processed in {args.micro_batches} micro-batches |",
             "| --- | --- | --- | --- |"]
    for join in (0.0, args.join_probability):
        samplers = {
            "random": lambda g: RandomSampler(rows, generator=g),
            "grouped by length": lambda g: LengthGroupedSampler(batch_size, lengths=train["seconds"], generator=g),
            "planned, 4 batches sorted together (--sorted-batches 4)": lambda g: train_hf.PlannedBatches(
                rows, pools, tokenizer, join, args.non_speech, batch_size, 4, SEED),
        }
        for name, make in samplers.items():
            sampler = make(torch.Generator().manual_seed(SEED))
            collator = train_hf.Collator(config, tokenizer, (), pools, join, args.non_speech,
                                         generator=torch.Generator().manual_seed(SEED), reader=reader)
            processed, order = Counter(), []
            for epoch in range(epochs):
                if hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                order += list(sampler)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                batch = order[start : start + batch_size]
                inputs = collator([{**rows[item[0]], "plan": item[1]} if isinstance(item, tuple) else rows[item] for item in batch])
                for part in train_hf.length_parts(inputs, args.micro_batches):
                    processed.update(real=int(part["attention_mask"].sum()), padded=int((~part["attention_mask"]).sum()))
            share = collator.frames["padded"] / collator.frames.total()
            lines.append(f"| {name} | {join} | {100 * share:.1f}% | {100 * processed['padded'] / processed.total():.1f}% |")
    return "\n".join(lines)


def level_report(data_dir: str = "data", clips: int = 60, hold_out: str = "yweweler") -> str:
    """How each source's log-mel spreads below its loudest cell, in the band the small preset reads; markdown.

    For `clips` training and validation clips of each group (espeak-ng, the real people, and the
    person `hold_out` apart, the one `--hold-out-speaker` holds out), drawn with the bench's seed:
    each bin's standard deviation over the clip (log-mel units, 1 = 40 dB), the share of cells at
    Whisper's floor (80 dB under the clip's loudest), and the quantiles of the cells in dB under the
    loudest cell, medians over the clips. The test split is never read.
    """
    import random

    with open(Path(data_dir) / "metadata.csv") as file:
        rows = [row for row in csv.DictReader(file) if row["split"] != "test"]
    groups = {
        "espeak-ng": [row for row in rows if row["source"] == "espeak-ng"],
        "real people": [row for row in rows if row["source"] != "espeak-ng" and row["speaker"] != hold_out],
        hold_out: [row for row in rows if row["speaker"] == hold_out],
    }
    config = BRoPEASRConfig.from_preset("small")
    bins = mel_bins_below(config.num_mel_bins, config.spectrogram_max_hz)
    floor_db = 10 * LOG_MEL_FLOOR_DB  # where log_mel_spectrogram puts everything quieter
    quantiles = torch.tensor([0.05, 0.10, 0.25, 0.50])
    lines = [f"{data_dir}: {clips} training and validation clips per group, the {bins} mel bins below "
             f"{config.spectrogram_max_hz / 1000:g} kHz", "",
             f"| clips | per-bin std over the clip | cells at the {floor_db:g}-dB floor | cells under the loudest, 5 / 10 / 25 / 50%, dB |",
             "| --- | --: | --: | --- |"]
    for name, group in groups.items():
        if not group:
            continue
        stds, floors, spreads = [], [], []
        for row in random.Random(SEED).sample(group, min(clips, len(group))):
            features = log_mel_spectrogram(load_audio(str(Path(data_dir) / row["file_name"]))[None])[0, :bins]  # (M', T)
            below = 40.0 * (features - features.max())  # dB under the clip's loudest cell
            stds.append(float(features.std(-1).mean()))
            floors.append(float((below <= -floor_db + 1e-3).float().mean()))
            spreads.append(torch.quantile(below.flatten(), quantiles))
        spread = torch.stack(spreads).median(0).values
        lines.append(f"| {name} ({len(stds)}) | {torch.tensor(stds).median():.3f} | {100 * torch.tensor(floors).median():.1f}% | "
                     + " / ".join(f"{value:.0f}" for value in spread.tolist()) + " |")
    return "\n".join(lines)


TRANSCRIBE_FILE = """
import json, sys, time
import torch
from transformers import PreTrainedTokenizerFast
import brope_asr
from brope_asr import BRoPEASRForConditionalGeneration, transcribe_file
run_dir, path, window, threads = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = BRoPEASRForConditionalGeneration.from_pretrained(run_dir).eval()
tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
def status(field):  # this process's own figures (ru_maxrss would carry the parent's from before exec)
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))
settled, release = [], brope_asr.release_freed_memory
def release_and_sample():  # transcribe_file calls this after each batch: what the process holds between batches
    release()
    settled.append(status("VmRSS"))
brope_asr.release_freed_memory = release_and_sample
loaded = status("VmHWM")
started = time.perf_counter()
text = transcribe_file(model, tokenizer, path, max_window_seconds=window)
elapsed = time.perf_counter() - started
print(json.dumps({"text": text, "seconds": elapsed, "loaded": loaded, "peak": status("VmHWM"),
                  "settled": settled or [status("VmRSS")]}))
"""

# The most one batch of `transcribe_file` can hold: `batch` windows of the full window length, cut from
# the split's clips joined back to back (cycled if they are too few), each decoded to its token limit (eos suppressed, so no window
# stops early; generate's length bound still ends it). Its peak bounds every file's.
WORST_BATCH = """
import json, sys
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerFast
from brope_asr import BRoPEASRFeatureExtractor, BRoPEASRForConditionalGeneration, SAMPLE_RATE, load_audio
run_dir, window, threads, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = BRoPEASRForConditionalGeneration.from_pretrained(run_dir).eval()
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))
class NoEos(LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores[:, model.config.eos_token_id] = -float("inf")
        return scores
audio = torch.cat([load_audio(path) for path in sys.argv[5:]])
length = int(window * SAMPLE_RATE)
audio = audio.repeat(-(-batch * length // len(audio)))  # the clips again, if they are fewer than the batch holds
windows = [audio[i * length : (i + 1) * length] for i in range(batch)]
loaded = status("VmHWM")
inputs = BRoPEASRFeatureExtractor.from_model_config(model.config)(windows, sampling_rate=SAMPLE_RATE)
with torch.no_grad():
    tokens = model.generate(**inputs, logits_processor=[NoEos()])
print(json.dumps({"loaded": loaded, "peak": status("VmHWM"), "tokens": tokens.shape[1] - 1}))
"""


def long_audio_report(
    run_dir: str,
    minutes: tuple[float, ...] = (1, 5, 20),
    data_dir: str = "data",
    max_window_seconds: float | None = None,
    split: str = "test",
) -> str:
    """Transcribe files of `minutes` joined from a split's clips, as `brope_asr.py transcribe` does; a markdown table.

    Each recording cycles through the clips in a seeded order, each followed by a pause of 0.3-0.7 s
    of silence, until it is at least that long, and is written to a 16-bit FLAC file; its reference
    is the clips' transcripts joined. A fresh process transcribes the file (`transcribe_file`: read
    a block at a time, cut into windows, decoded) and reports its time and peak resident memory, so
    memory is the transcriber's alone, and samples what it holds after each batch (once the freed
    heap is handed back); the same clips decoded one by one give the WER the file is compared with.
    (Linux: memory is the process's VmHWM and VmRSS.)
    """
    import json
    import subprocess

    import soundfile
    from transformers import PreTrainedTokenizerFast

    model = BRoPEASRForConditionalGeneration.from_pretrained(run_dir).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(run_dir)
    with open(Path(data_dir) / "metadata.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["split"] == split]
    clips = [load_audio(str(Path(data_dir) / row["file_name"])) for row in rows]
    texts = [" ".join(row["transcription"].lower().split()) for row in rows]
    generator = torch.Generator().manual_seed(SEED)
    alone = transcribe(model, tokenizer, clips)
    window = window_seconds(model.config, max_window_seconds)
    lines = [
        f"model {run_dir}: windows of at most {window:.1f} s; {len(clips)} {split} clips, "
        f"WER decoded one by one {100 * word_error_rate(alone, texts):.2f}%",
        "",
        "| recording | WER | WER of its clips one by one | real-time factor | peak memory (model loaded / transcribing) | resident between batches (first / last / most) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for length in minutes:
        parts, order, total = [], [], 0
        while total < length * 60 * SAMPLE_RATE:
            for i in torch.randperm(len(clips), generator=generator).tolist():
                pause = torch.zeros(int(float(torch.empty(()).uniform_(0.3, 0.7, generator=generator)) * SAMPLE_RATE))
                parts += [clips[i], pause]
                order.append(i)
                total += len(clips[i]) + len(pause)
                if total >= length * 60 * SAMPLE_RATE:
                    break
        progress(f"long audio: {length} min, {len(order)} clips")
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "recording.flac"
            soundfile.write(path, torch.cat(parts).clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16")
            seconds = total / SAMPLE_RATE
            del parts
            result = subprocess.run(
                [sys.executable, "-c", TRANSCRIBE_FILE, run_dir, str(path), str(window), str(torch.get_num_threads())],
                capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
            )
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        settled = measured["settled"]
        reference = " ".join(texts[i] for i in order)
        one_by_one = " ".join(alone[i] for i in order if alone[i])
        lines.append(
            f"| {seconds / 60:.1f} min ({len(order)} clips) | "
            f"{100 * word_error_rate([measured['text']], [reference]):.2f}% | {100 * word_error_rate([one_by_one], [reference]):.2f}% | "
            f"{measured['seconds'] / seconds:.4f} | {bytes_text(measured['loaded'])} / {bytes_text(measured['peak'])} | "
            f"{' / '.join(bytes_text(b) for b in (settled[0], settled[-1], max(settled)))} |"
        )
    batch = 32  # transcribe_file's default
    paths = [str(Path(data_dir) / row["file_name"]) for row in rows]
    result = subprocess.run(
        [sys.executable, "-c", WORST_BATCH, run_dir, str(window), str(torch.get_num_threads()), str(batch), *paths],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parent.parent,
    )
    worst = json.loads(result.stdout.strip().splitlines()[-1])
    lines.append(
        f"| the bound: one batch of {batch} windows of {window:.1f} s, each decoded to its limit "
        f"({worst['tokens']} tokens) | | | | {bytes_text(worst['loaded'])} / {bytes_text(worst['peak'])} | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, measure every row (on CPU, then on CUDA if asked), print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke run that checks no speed")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch and numpy's BLAS (default: their own choice)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed samples per figure (5; --quick: 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda adds the GPU column (bf16)")
    parser.add_argument("--rows", type=lambda spec: {int(n) for n in spec.split(",")}, metavar="N,N",
                        help="measure only these rows (1 and 5 come together), e.g. 2,3,6; default: all")
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (default: keep_freed_memory, as train_hf.py trains)")
    parser.add_argument("--long-audio", metavar="RUN_DIR", help="instead: long recordings through this trained model")
    parser.add_argument("--window-seconds", type=float, help="with --long-audio: the longest window (default: the model's)")
    parser.add_argument("--split", default="test", help="with --long-audio: the split whose clips are joined")
    parser.add_argument("--minutes", type=lambda spec: tuple(float(n) for n in spec.split(",")), default=(1, 5, 20),
                        metavar="M,M", help="with --long-audio: the recordings' lengths in minutes (default 1,5,20)")
    parser.add_argument("--padding", action="store_true", help="instead: padding in training batches, random vs length-grouped vs planned and sorted")
    parser.add_argument("--levels", action="store_true", help="instead: how far below its loudest cell each source's log-mel spreads")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU, and torch.cuda.is_available() is False")
    if args.threads is not None:
        limit_blas_threads(args.threads, sys.argv[1:] if argv is None else argv)
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # Whisper's generate warns about its defaults on every call
    if args.padding or args.levels:
        report = padding_report() if args.padding else level_report()
        print(report)
        if args.out:
            Path(args.out).write_text(report + "\n")
        return 0
    if args.long_audio:
        report = long_audio_report(args.long_audio, args.minutes, max_window_seconds=args.window_seconds, split=args.split)
        print(report)
        if args.out:
            Path(args.out).write_text(report + "\n")
        return 0
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats or (1 if args.quick else 5)
    malloc = "glibc's default" if args.default_malloc else "keep_freed_memory, as train_hf.py"
    if not args.default_malloc and not keep_freed_memory():
        malloc = "the C library's default (keep_freed_memory needs glibc)"

    cpu = Runner(torch.device("cpu"), repeats)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    rows = measure_all(cpu, sizes, args.rows)
    gpu_name = "none (GPU column left empty)"
    if args.device == "cuda":
        gpu = replace(cpu, device=torch.device("cuda"))
        gpu_name = f"{torch.cuda.get_device_name(gpu.device)} ({gpu.label})"
        by_name = {row.name: row for row in measure_all(gpu, sizes, args.rows)}
        for row in rows:
            gpu_row = by_name.get(row.name)
            if gpu_row is not None:
                row.gpu = "skipped" if gpu_row.ratio is None else gpu_row.ratio_text()
    header = [
        f"# brope-asr benchmark{' (--quick: tiny sizes, speed not meaningful)' if args.quick else ''}",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs; torch threads: {torch.get_num_threads()}; "
        f"numpy BLAS threads: {os.environ.get('OPENBLAS_NUM_THREADS', 'its default')}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}",
        f"- device: {cpu.label}; GPU: {gpu_name}; malloc: {malloc}",
        f"- load average (1 min) before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs; wall time {time.perf_counter() - started:.0f} s",
        f"- each figure: median of {repeats} timed samples after one warm-up (n=… where a slow call got fewer);"
        " memory: peak bytes of live tensors created in one forward+backward (a TorchDispatchMode count)",
        "- ratio: anchor time / ours (throughput: ours / anchor; FLOP utilization: ours / matmul; memory growth: "
        "bytes per position, shortest / longest), so higher is better for us; target: the smallest ratio wanted",
    ]
    report = render(rows, header)
    print(report)
    if args.out:
        with open(args.out, "w") as out:
            out.write(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
