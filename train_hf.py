"""Train and evaluate a brope-asr recognizer with Hugging Face's Seq2SeqTrainer.

With no arguments it trains the small preset on the spoken-digits corpus shipped in data/ and
reports WER from autoregressive decoding (never from teacher-forced argmax) on the validation
split during training and on the test split (held-out voices) at the end:

    python train_hf.py                                   # CPU, 7.5-10.5 minutes on 2 cores (README: measured)
    python train_hf.py --input-mode both --betweenness --blend-attention --ctc-weight 0
    torchrun --nproc_per_node 2 train_hf.py --max-steps 400
    python train_hf.py --dataset openslr/librispeech_asr --dataset-config clean \\
        --train-split train.100 --eval-split validation --test-split test --preset base

The run directory (--output-dir) ends up holding the model and tokenizer (`from_pretrained`
works on it), checkpoints, metrics.csv, and curves.png when matplotlib is installed.
"""

import argparse
import csv
import io
import math
import os
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from datasets import Audio, Dataset, IterableDataset, concatenate_datasets, load_dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from brope_asr import (
    HOP_LENGTH,
    LOG_MEL_FLOOR_DB,
    SAMPLE_RATE,
    BRoPEASRConfig,
    BRoPEASRFeatureExtractor,
    BRoPEASRForConditionalGeneration,
    BRoPEASRProcessor,
    BetweennessShift,
    audio_array,
    char_error_rate,
    keep_freed_memory,
    load_audio,
    mel_bins_below,
    mel_centers,
    open_audio,
    resample,
    token_scores,
    transcribe,
    word_error_rate,
)

DATA_DIR = Path(__file__).resolve().parent / "data"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, matching BRoPEASRConfig's defaults
DEFAULT_MAX_STEPS = 2300
RESCORING_BEAMS = 8  # decoding's beam width when CTC rescores it: 8 hypotheses per clip (README, CTC)
# Training rows of these sources come N times an epoch: the embedded corpus's real people (28% of its training rows) and
# its other engines' utterances (27%), which are then 35% of an epoch's draws instead of 21% (README, "The other engines
# twice an epoch")
DEFAULT_SOURCE_REPEATS = {"fsdd": 2, "mbrola": 2, "pico": 2}
# With no --augment, vocal-tract-length perturbation varies every synthetic clip (espeak-ng, MBROLA, Pico), not the real
# people's; chosen on validation by rules written first (README, "VTLP on the synthetic sources")
DEFAULT_AUGMENTATIONS, DEFAULT_AUGMENT_SOURCES = ("vtlp",), ("espeak-ng", "mbrola", "pico")
TRAINING_WEIGHTS = "training_weights.pt"  # with --ema-decay, a checkpoint's own weights beside its averaged model
TOKENIZER_ROWS = 10_000  # with --streaming, the tokenizer is built from this many first training transcripts


# ----------------------------------------------------------------------------------------------- data


def normalize_text(text: str) -> str:
    """Lowercase and collapse whitespace: the transcript form the tokenizer and WER see."""
    return " ".join(str(text).lower().split())


def build_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer over the characters of `texts`, with <pad> <s> </s> <unk> as ids 0-3."""
    characters = sorted(set("".join(texts)))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + tuple(characters))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character a token
    tokenizer.decoder = decoders.Fuse()  # join characters back without separators
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk)


def build_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of at most `vocab_size` tokens learned from `texts`, <pad> <s> </s> <unk> as ids 0-3.

    Byte level: all 256 bytes are in the vocabulary, so any text encodes (no unknown token) and
    decodes back exactly; merges fill the rest, most frequent pairs first (GPT-2's scheme), until
    `vocab_size` or until no pair is left to merge.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        raise ValueError(f"bpe:{vocab_size}: a byte-level BPE needs at least {len(SPECIAL_TOKENS) + len(alphabet)} tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    pad, bos, eos, unk = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk)


def audio_source(value) -> tuple:
    """An undecoded `datasets` audio value -> (what soundfile reads, file name).

    The value is a path string, an encoded {"bytes", "path"} dict (parquet and hub datasets), or a
    decoded {"array", "sampling_rate"} dict (a dataset built in memory), returned as is.
    """
    if isinstance(value, dict):
        if value.get("array") is not None:
            return value, value.get("path") or "an in-memory array"
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        return source, value.get("path") or "embedded bytes"
    return value, value


def read_clip(value, name: str) -> torch.Tensor:
    """Decode one dataset audio value (see `audio_source`) to (N,) float32 at 16 kHz, or raise ValueError naming `name`."""
    source, _ = audio_source(value)
    if isinstance(source, dict):
        return audio_array(source["array"], source["sampling_rate"], name)
    return load_audio(source, name=name)


def audio_seconds(value, name: str) -> float:
    """A clip's duration from its header alone (soundfile reads no samples), or raise ValueError naming `name`."""
    source, _ = audio_source(value)
    if isinstance(source, dict):
        return len(source["array"]) / int(source["sampling_rate"])
    with open_audio(source, name) as file:
        frames, rate = file.frames, file.samplerate
    if rate <= 0 or frames <= 0:
        raise ValueError(f"{name}: header gives {frames} frames at {rate} Hz")
    return frames / rate


def read_table(path: Path) -> Dataset:
    """One metadata or data file as a dataset: .csv, .json / .jsonl (one object per line) or .parquet."""
    builder = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix)
    if builder is None:
        raise ValueError(f"{path}: a table must be .csv, .json, .jsonl or .parquet")
    return load_dataset(builder, data_files=str(path), split="train")


def read_audio_folder(folder: Path) -> Dataset:
    """The audiofolder layout, read without `datasets`' audio encoder: one table with file_name and split.

    Metadata is metadata.csv or metadata.jsonl with a file_name column (paths relative to the
    metadata's folder): at the top with a split column (as data/ has), at the top with file names
    that start with their split's folder, or in each split's own folder.
    """
    def metadata(where: Path) -> Path | None:
        return next((where / name for name in ("metadata.csv", "metadata.jsonl") if (where / name).is_file()), None)

    tables = []
    top = metadata(folder)
    places = [(top, None)] if top else [(metadata(sub), sub.name) for sub in sorted(folder.iterdir()) if sub.is_dir() and metadata(sub)]
    if not places:
        raise ValueError(f"{folder}: no metadata.csv or metadata.jsonl at the top or in any split folder")
    for path, split in places:
        table = read_table(path)
        if "file_name" not in table.column_names:
            raise ValueError(f"{path} has no column 'file_name'; its columns are {table.column_names}")
        table = table.map(lambda row, where=path.parent: {"file_name": str(where / row["file_name"])})
        if split is not None:
            table = table.remove_columns([c for c in ("split",) if c in table.column_names]).add_column("split", [split] * len(table))
        elif "split" not in table.column_names:
            table = table.add_column("split", [Path(name).relative_to(folder).parts[0] for name in table["file_name"]])
        tables.append(table)
    return concatenate_datasets(tables)


def load_splits(args) -> dict[str, Dataset]:
    """The train / validation / test splits as datasets with columns "audio" (undecoded) and "text".

    From --data-dir (an audio folder whose metadata has a transcription column), or --dataset: a
    hub name, a local audio folder, a local folder of parquet shards (split from the file names,
    as on the hub), or one .parquet/.csv/.jsonl file with a split column.
    """
    names = {"train": args.train_split, "validation": args.eval_split, "test": args.test_split}
    names = {key: name for key, name in names.items() if name}
    audio_column, text_column = args.audio_column, args.text_column
    local = Path(args.dataset) if args.dataset and Path(args.dataset).exists() else None
    if local is not None and local.is_dir() and not any(local.rglob("*.parquet")):
        table = read_audio_folder(local)
        audio_column = "file_name"
    elif local is not None and local.is_file():
        table = read_table(local)
    elif args.dataset:
        table = None
    else:
        table = read_audio_folder(Path(args.data_dir))
        audio_column, text_column = "file_name", "transcription"
    streaming = getattr(args, "streaming", False)
    if table is None:  # the hub, or a folder of parquet shards: datasets finds the splits
        splits = {key: load_dataset(args.dataset, args.dataset_config, split=name, streaming=streaming and key == "train")
                  for key, name in names.items()}
    elif "split" not in table.column_names:
        raise ValueError(f"{args.dataset or args.data_dir} has no column 'split'; its columns are {table.column_names}")
    else:
        splits = {key: table.filter(lambda row, name=name: row["split"] == name) for key, name in names.items()}
        if streaming:  # shards, so that processes under torchrun each read their own
            splits["train"] = splits["train"].to_iterable_dataset(num_shards=min(64, max(1, len(splits["train"]))))
    if streaming and args.hold_out_speaker:
        raise ValueError("--hold-out-speaker needs the whole training split; it cannot be combined with --streaming")
    for key, split in splits.items():
        columns = split.column_names or []  # a stream may not know its columns before it is read
        for column in (audio_column, text_column):
            if columns and column not in columns:
                raise ValueError(f"{key} split has no column {column!r}; its columns are {columns}")
        if split.features and isinstance(split.features.get(audio_column), Audio):
            split = split.cast_column(audio_column, Audio(decode=False))  # decoded with soundfile, per batch
        extra = [column for column in ("source", "speaker") if column in columns]  # optional metadata
        split = split.select_columns([audio_column, text_column, *extra])
        renames = {old: new for old, new in ((audio_column, "audio"), (text_column, "text")) if old != new}
        if renames:  # a stream refuses to rename a column to its own name
            split = split.rename_columns(renames)
        missing = {column: "" for column in ("source", "speaker") if column not in extra}
        if missing and isinstance(split, IterableDataset):
            split = split.map(lambda row: missing)
        elif missing:
            for column in missing:
                split = split.add_column(column, [""] * len(split))
        splits[key] = split
    if args.hold_out_speaker:
        splits = hold_out_speaker(splits, args.hold_out_speaker)
    for key in ("train", "validation"):
        if key not in splits or (not isinstance(splits[key], IterableDataset) and len(splits[key]) == 0):
            raise ValueError(f"the {key} split ({names.get(key)!r}) is missing or empty")
    return {key: split for key, split in splits.items() if isinstance(split, IterableDataset) or len(split)}


def hold_out_speaker(splits: dict[str, Dataset], speaker: str) -> dict[str, Dataset]:
    """Move every training and validation clip of `speaker` into the final split, in place of the test split.

    A person the model never hears, chosen from the training people: what helps with unseen voices
    can then be measured without reading the test split, which is dropped unread.
    """
    held = [split.filter(lambda row: row["speaker"] == speaker) for key, split in splits.items() if key != "test"]
    if not sum(len(split) for split in held):
        raise ValueError(f"--hold-out-speaker {speaker}: no training or validation clip has that speaker")
    kept = {key: split.filter(lambda row: row["speaker"] != speaker) for key, split in splits.items() if key != "test"}
    return {**kept, "test": concatenate_datasets(held)}


def prepare_row(row: dict, index: int | None, key: str, tokenizer, config: BRoPEASRConfig, decode: bool) -> dict:
    """Check one row and tokenize its transcript (ending with eos); the audio itself is not returned.

    A row is bad if its audio cannot be read or used, is longer than `max_source_positions`, or its
    transcript is longer than `max_target_positions`. The audio's header is read (soundfile reads
    no samples for it); with `decode` the samples are decoded and checked too.
    Returns:
        name ("split row i (file)", or "split (file)" for a stream, whose order is not fixed), text,
        labels, seconds, and error ("" for a good row).
    """
    _, file_name = audio_source(row["audio"])
    name = f"{key} ({file_name})" if index is None else f"{key} row {index} ({file_name})"
    try:
        seconds = len(read_clip(row["audio"], name)) / SAMPLE_RATE if decode else audio_seconds(row["audio"], name)
        if seconds * SAMPLE_RATE // HOP_LENGTH > config.max_source_positions:
            raise ValueError(f"{name}: {seconds:.1f} s is longer than max_source_positions={config.max_source_positions} frames")
        text = normalize_text(row["text"])
        labels = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        if len(labels) > config.max_target_positions:
            raise ValueError(f"{name}: transcript of {len(labels)} tokens exceeds max_target_positions")
    except ValueError as error:
        return {"name": name, "text": "", "labels": [], "seconds": 0.0, "error": str(error)}
    return {"name": name, "text": text, "labels": labels, "seconds": seconds, "error": ""}


def prepare_split(split: Dataset, key: str, tokenizer, config: BRoPEASRConfig, skip_bad: bool, decode: bool) -> Dataset:
    """Check every row (`prepare_row`) and tokenize its transcript; the audio stays as the dataset holds it.

    Every row's header is read before training; with `decode` (validation and test, which every
    evaluation reads whole) the samples are decoded and checked too, so evaluation never meets a
    bad row. Nothing decoded is kept, and the audio column is not copied: the checked columns are
    joined to it side by side, and the collator decodes each clip when its batch is built
    (`ClipReader`). With `skip_bad` bad rows are dropped with a warning and a count; otherwise the
    run stops listing every bad row.
    Returns:
        the rows with columns audio (as given), source, speaker, name, text, labels and seconds.
    """
    checked = split.map(
        partial(prepare_row, key=key, tokenizer=tokenizer, config=config, decode=decode),
        with_indices=True, remove_columns=split.column_names, desc=f"checking {key}",
    )
    prepared = concatenate_datasets([split.select_columns(["audio", "source", "speaker"]), checked], axis=1)
    errors = [e for e in prepared["error"] if e]
    if errors and not skip_bad:
        raise ValueError(f"{len(errors)} bad rows in the {key} split:\n" + "\n".join(errors))
    if errors:
        warnings.warn(f"skipped {len(errors)} bad rows of {len(prepared)} in the {key} split:\n" + "\n".join(errors))
        prepared = prepared.filter(lambda error: not error, input_columns="error")
    # Counted on the token ids, so it holds for any tokenizer, not only the character one.
    unknown = sum(labels.count(tokenizer.unk_token_id) for labels in prepared["labels"]) if tokenizer.unk_token else 0
    if unknown:
        warnings.warn(f"{unknown} characters in the {key} split are not in the tokenizer and map to {tokenizer.unk_token}")
    return prepared.remove_columns("error")


def stream_split(
    split: IterableDataset, tokenizer, config: BRoPEASRConfig, skip_bad: bool, seed: int, buffer_size: int
) -> tuple[IterableDataset, list[str]]:
    """The training split as a stream (`--streaming`): shuffled in a buffer, each row checked as it comes.

    Rows are checked by their header (`prepare_row`) and their samples decoded when the batch is
    built, as in map-style training. A bad row is skipped with a warning naming it and recorded in
    the returned list, or, without `skip_bad`, stops the run.
    Returns:
        (the stream with the columns of `prepare_split`, the bad rows' errors so far).
    """
    skipped = []

    def good(error: str) -> bool:
        if error and not skip_bad:
            raise ValueError(f"bad row in the train split: {error}")
        if error:
            skipped.append(error)
            warnings.warn(f"skipped a bad row: {error}")
        return not error

    checked = split.shuffle(seed=seed, buffer_size=buffer_size).map(
        lambda row: prepare_row(row, None, "train", tokenizer, config, decode=False)
    )
    return checked.filter(good, input_columns="error").remove_columns("error"), skipped


class ClipReader:
    """Decodes a row's audio when its batch is built, keeping decoded clips in memory up to a budget.

    The dataset holds audio as it came (a path or the encoded bytes) and nothing decoded is written
    to disk. Decoded clips are kept while their float32 samples total at most `cache_megabytes`, so
    a corpus that fits (the embedded one's training and validation splits are about 370 MiB
    decoded) is decoded once and a larger one is decoded again every epoch, in bounded memory. A row that cannot be decoded is, with
    `skip_bad`, left out of its batch with a warning naming it and counted in `skipped`, once per
    row; otherwise its ValueError stops the run.
    """

    def __init__(self, cache_megabytes: float = 1024, skip_bad: bool = True):
        self.budget, self.used = cache_megabytes * 2**20, 0
        self.skip_bad = skip_bad
        self.cache: dict[str, torch.Tensor] = {}
        self.skipped: dict[str, str] = {}  # row name -> why

    def __call__(self, row: dict) -> torch.Tensor | None:
        """(N,) float32 at 16 kHz, a fresh copy (augmentation writes into it), or None for a skipped row."""
        name = row.get("name") or "a row without a name"  # rows from prepare_split have names; only named rows are kept
        clip = self.cache.get(name)
        if clip is None:
            if row.get("name") in self.skipped:
                return None
            try:
                clip = read_clip(row["audio"], name)
            except ValueError as error:
                if not self.skip_bad:
                    raise
                self.skipped[name] = str(error)
                warnings.warn(f"skipped at batch time (not decodable): {error}")
                return None
            if row.get("name") and self.used + 4 * clip.numel() <= self.budget:
                self.cache[name], self.used = clip, self.used + 4 * clip.numel()
        return clip.clone()


# --------------------------------------------------------------------------------------- augmentation
#
# Each function is one perturbation with a natural identity setting (speed 1, alpha 1, rt60 0,
# SNR inf, the full band, gain 0 dB), takes its randomness from an optional torch.Generator (None =
# torch's global generator, which Trainer seeds), and keeps a clip's length, except the speed change.

AUGMENTATIONS = ("speed", "vtlp", "reverb", "noise", "telephone", "gain", "specaugment", "narrowband")
VTLP_RANGE = (0.9, 1.1)  # vocal tract length perturbation's warp factors [Jaitly & Hinton 2013]; --vtlp-range
NARROWBAND_HZ = 4000.0  # "narrowband": what an 8 kHz recording (FSDD's people, MBROLA, a telephone) cannot hold ...
NARROWBAND_SHARE = 0.5  # ... taken from this share of the varied clips, so the top band tells no source apart
SPEEDS = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15)  # speed perturbation [Ko et al. 2015], wider and finer than Kaldi's 0.9/1.0/1.1
NON_SPEECH_KINDS = ("silence", "white", "pink", "brown", "lowpass", "hum", "tones", "music", "dc", "clicks")
NOISE_KINDS = ("white", "pink", "brown", "lowpass", "hum", "tones", "music", "clicks")  # backgrounds for "noise"


def uniform(low: float, high: float, generator: torch.Generator | None = None) -> float:
    """One draw from U(low, high)."""
    return float(torch.empty(()).uniform_(low, high, generator=generator))


def choice(options: tuple, generator: torch.Generator | None = None):
    """One of `options`, uniformly."""
    return options[int(torch.randint(len(options), (), generator=generator))]


def change_speed(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """(N,) -> (ceil(N / factor),): played `factor` times faster, so tempo, pitch and formants all scale."""
    return resample(clip, round(SAMPLE_RATE * factor), SAMPLE_RATE)


def warp_frequencies(features: torch.Tensor, alpha: float) -> torch.Tensor:
    """Vocal tract length perturbation [Jaitly & Hinton 2013] on log-mel features.

    The spectrum is stretched along frequency by `alpha`: what a speaker put at f Hz appears at
    alpha f, as a vocal tract 1/alpha as long would put it. Each mel bin takes the (linearly
    interpolated) value of the bin whose centre is at its own centre / alpha; bins past the top
    repeat the top bin.
    Args:
        features: (M, T) log-mel.
        alpha: warp factor; 1 is the identity.
    Returns:
        (M, T), same dtype.
    """
    centers = mel_centers(features.shape[0])
    source = (centers / alpha).clamp(centers[0], centers[-1])
    upper = torch.searchsorted(centers, source).clamp(1, len(centers) - 1)
    lower = upper - 1
    weight = ((source - centers[lower]) / (centers[upper] - centers[lower])).to(features.dtype)[:, None]
    return features[lower] * (1 - weight) + features[upper] * weight


def narrow_band(features: torch.Tensor, max_hz: float = NARROWBAND_HZ) -> torch.Tensor:
    """The log-mel an ideal 8 kHz channel would give a clip: every bin centred at or above `max_hz` at the
    clip's floor, Whisper's 80 dB under its loudest cell, as for a recording with nothing above 4 kHz.

    A real 8 kHz recording leaks a little past 4 kHz, but under a floor 50 dB down
    (`spectrogram_floor_db`) those bins were measured flat for FSDD's people and MBROLA too. With this on the
    wideband sources' clips, the band above 4 kHz no longer tells a synthetic voice from a real one,
    so the model can read it (a wideband "six" has its /s/ there) and still do without it.

    Args:
        features: (M, T) log-mel (`log_mel_spectrogram`) of one clip's real frames.
        max_hz: the band's top; SAMPLE_RATE / 2 keeps every bin (the identity).
    Returns:
        (M, T), a new tensor.
    """
    floor = features.amax() - LOG_MEL_FLOOR_DB / 4.0  # features are (log10 power + 4) / 4: 8 in log10 is 2 here
    kept = mel_bins_below(features.shape[0], max_hz)
    return torch.cat((features[:kept], floor.expand(features.shape[0] - kept, features.shape[1])))


def reverberate(clip: torch.Tensor, rt60: float, drr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Convolve with a synthetic room impulse response, keeping the clip's length and RMS level.

    The response is a direct path followed by exponentially decaying Gaussian noise that falls by
    60 dB in `rt60` seconds (the statistical reverberation model of Sabine and Schroeder), with the
    direct path `drr_db` above the reverberant energy.
    Args:
        clip: (N,) waveform.
        rt60: reverberation time in seconds; 0 is the identity.
        drr_db: direct-to-reverberant energy ratio in dB.
    Returns:
        (N,) float32.
    """
    if rt60 <= 0:
        return clip
    t = torch.arange(max(1, round(rt60 * SAMPLE_RATE))) / SAMPLE_RATE
    tail = torch.randn(len(t), generator=generator) * torch.exp(-math.log(1000.0) * t / rt60)  # 60 dB = 1000x in amplitude
    response = tail / tail.norm() * 10 ** (-drr_db / 20)
    response[0] += 1.0
    size = len(clip) + len(response)
    wet = torch.fft.irfft(torch.fft.rfft(clip, size) * torch.fft.rfft(response, size), size)[: len(clip)]
    return wet * (clip.norm() / wet.norm().clamp_min(1e-12))


def add_noise(clip: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """(N,) clip plus (N,) `noise` scaled to `snr_db` below the clip's power; SNR inf is the identity."""
    if math.isinf(snr_db):
        return clip
    scale = clip.norm() / noise.norm().clamp_min(1e-12) * 10 ** (-snr_db / 20)
    return clip + scale * noise


def telephone_band(clip: torch.Tensor, low_hz: float = 300.0, high_hz: float = 3400.0, mu_law: bool = True) -> torch.Tensor:
    """A narrow-band telephone channel: the 300-3400 Hz band and 8-bit mu-law samples (ITU-T G.711).

    FSDD's real recordings are 8 kHz, so their spectra stop at 4 kHz; this teaches the model that
    a missing top band is a channel, not a different word.
    Args:
        clip: (N,) waveform.
        low_hz, high_hz: the pass band (0 and 8000 with mu_law False is the identity).
        mu_law: round to 256 mu-law levels (mu = 255), relative to the clip's peak.
    Returns:
        (N,) float32.
    """
    spectrum = torch.fft.rfft(clip)
    frequencies = torch.fft.rfftfreq(len(clip), 1 / SAMPLE_RATE)
    band = torch.fft.irfft(spectrum * ((frequencies >= low_hz) & (frequencies <= high_hz)), len(clip))
    if not mu_law:
        return band
    peak = band.abs().max().clamp_min(1e-12)
    mu = 255.0
    compressed = torch.sign(band) * torch.log1p(mu * band.abs() / peak) / math.log1p(mu)
    compressed = torch.round(compressed * 127.5) / 127.5
    return torch.sign(compressed) * torch.expm1(compressed.abs() * math.log1p(mu)) / mu * peak


def colored_noise(num_samples: int, exponent: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N,) Gaussian noise with power spectral density proportional to 1 / f^exponent (0 white, 1 pink, 2 brown)."""
    spectrum = torch.fft.rfft(torch.randn(num_samples, generator=generator))
    frequencies = torch.fft.rfftfreq(num_samples).clamp_min(1.0 / num_samples)
    return torch.fft.irfft(spectrum / frequencies ** (exponent / 2), num_samples)


def non_speech(num_samples: int, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """A clip of something that is not speech, which must be transcribed as nothing.

    Kinds: digital or near silence; white, pink and brown noise; noise low-passed at 0.2-4 kHz (what
    audio sampled at 1 kHz becomes); mains hum (50 or 60 Hz and harmonics); one to three steady or
    gliding tones; music (notes with harmonics and decaying envelopes, up to three voices); a DC
    offset; and clicks. Levels are drawn from -50 to -10 dBFS RMS, peaks kept within full scale.
    Args:
        num_samples: N at 16 kHz.
        kind: one of NON_SPEECH_KINDS.
    Returns:
        (N,) float32.
    """
    if kind not in NON_SPEECH_KINDS:
        raise ValueError(f"kind must be one of {NON_SPEECH_KINDS}, got {kind!r}")
    t = torch.arange(num_samples) / SAMPLE_RATE
    if kind == "silence":
        return torch.randn(num_samples, generator=generator) * 10 ** (uniform(-120, -70, generator) / 20)
    if kind in ("white", "pink", "brown"):
        clip = colored_noise(num_samples, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind], generator)
    elif kind == "lowpass":
        spectrum = torch.fft.rfft(torch.randn(num_samples, generator=generator))
        clip = torch.fft.irfft(spectrum * (torch.fft.rfftfreq(num_samples, 1 / SAMPLE_RATE) < uniform(200, 4000, generator)), num_samples)
    elif kind == "hum":
        mains = choice((50.0, 60.0), generator)
        clip = sum(uniform(0, 1, generator) / h * torch.sin(2 * math.pi * mains * h * t + uniform(0, 6.3, generator)) for h in range(1, 9))
    elif kind == "tones":
        clip = torch.zeros(num_samples)
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            start, end = uniform(100, 4000, generator), uniform(100, 4000, generator) if uniform(0, 1, generator) < 0.5 else None
            frequency = start if end is None else start + (end - start) * t / (2 * t[-1].clamp_min(1e-3))  # linear glide
            clip += torch.sin(2 * math.pi * frequency * t)
    elif kind == "music":
        clip = torch.zeros(num_samples)
        for _ in range(int(torch.randint(1, 4, (), generator=generator))):
            position = 0
            while position < num_samples:
                length = int(uniform(0.1, 0.6, generator) * SAMPLE_RATE)
                note = 440.0 * 2 ** ((int(torch.randint(40, 85, (), generator=generator)) - 69) / 12)  # MIDI 40-84
                span = t[: min(length, num_samples - position)]
                tone = sum(torch.sin(2 * math.pi * note * h * span) / h ** uniform(1, 2.5, generator) for h in range(1, 7))
                clip[position : position + len(span)] += tone * torch.exp(-span / uniform(0.05, 0.5, generator))
                position += length
    elif kind == "dc":
        clip = torch.full((num_samples,), choice((-1.0, 1.0), generator)) + 0.01 * torch.randn(num_samples, generator=generator)
    else:  # clicks
        clip = torch.zeros(num_samples)
        clip[torch.randint(num_samples, (int(torch.randint(1, 20, (), generator=generator)),), generator=generator)] = 1.0
    clip = clip * 10 ** (uniform(-50, -10, generator) / 20) / clip.square().mean().sqrt().clamp_min(1e-12)
    return (clip / clip.abs().max().clamp_min(1.0)).float()  # a peak past full scale is turned down, not clipped


def join_words(clips: list[torch.Tensor], texts: list[str], pauses: list[float], generator: torch.Generator | None = None) -> tuple[torch.Tensor, str]:
    """Connected speech from isolated words: the clips in order with natural pauses between them.

    Each pause holds noise at the level of the quietest 10 ms of the word before it, so the
    recording's own background continues instead of dropping to digital zero.
    Args:
        clips: W isolated words, each (N_w,) at 16 kHz, from one speaker.
        texts: their W transcripts.
        pauses: W - 1 pause lengths in seconds, one after each word but the last.
        generator: the noise's randomness.
    Returns:
        ((sum N_w + pauses,) float32, the transcripts joined by single spaces).
    """
    if len(pauses) != len(clips) - 1:
        raise ValueError(f"{len(clips)} words need {len(clips) - 1} pauses, got {len(pauses)}")
    pieces = []
    for index, clip in enumerate(clips):
        if index:
            frames = pieces[-1][: len(pieces[-1]) // HOP_LENGTH * HOP_LENGTH].view(-1, HOP_LENGTH)
            floor = frames.square().mean(1).sqrt().min() if len(frames) else torch.tensor(0.0)
            pieces.append(torch.randn(int(pauses[index - 1] * SAMPLE_RATE), generator=generator) * floor)
        pieces.append(torch.as_tensor(clip).float())
    return torch.cat(pieces), " ".join(texts)


@dataclass(frozen=True)
class Plan:
    """What one training example will be, drawn before any audio is decoded, so its duration is known."""

    seconds: float  # the example's duration (the row's own, where the row states it)
    kind: Literal["row", "non_speech", "joined"] = "row"  # the row's clip, a non-speech clip, or joined words
    noise: str = ""  # non_speech: which kind of sound (NON_SPEECH_KINDS)
    words: tuple[int, ...] = ()  # joined: indices into the row speaker's word pool
    pauses: tuple[float, ...] = ()  # joined: seconds of pause after each word but the last
    tokens: int = 0  # its label tokens, eos included (set by PlannedBatches, which weighs batches by them)
    loss_scale: float = 1.0  # its batch's weight in training: the batch's tokens over the mean of its window's batches


def draw_plan(
    row: dict, pools: dict[str, list[dict]], join_probability: float, non_speech_probability: float,
    generator: torch.Generator | None = None,
) -> Plan:
    """One training example's plan: non-speech, a string of the speaker's words, or the row itself.

    With probability `non_speech_probability` a non-speech clip of 0.3-3 s labelled with nothing;
    else, if the row is one word of a speaker in `pools`, with probability `join_probability` 2-7 of
    that speaker's words (drawn with replacement) with pauses of 0-250 ms; else the row's own clip.
    """
    if uniform(0, 1, generator) < non_speech_probability:
        return Plan(uniform(0.3, 3.0, generator), "non_speech", noise=choice(NON_SPEECH_KINDS, generator))
    pool = pools.get(row.get("speaker", ""))
    if pool and " " not in row["text"] and uniform(0, 1, generator) < join_probability:
        count = int(torch.randint(2, 8, (), generator=generator))
        words = tuple(torch.randint(len(pool), (count,), generator=generator).tolist())
        pauses = tuple(uniform(0, 0.25, generator) for _ in range(count - 1))
        return Plan(sum(pool[w]["seconds"] for w in words) + sum(pauses), "joined", words=words, pauses=pauses)
    return Plan(row.get("seconds", 0.0))


class Collator:
    """Builds each training example, augments it, pads the batch and builds the model inputs.

    Each row's audio is decoded here, by `reader` (a `ClipReader`); a row it skips is left out of
    the batch. Only rows marked augment=True (the training split's) are changed; evaluation sees clean audio.
    For those, each row becomes what its plan says (`draw_plan`: the row's "plan", drawn by
    `PlannedBatches` before batching, or drawn here with `join_probability` and
    `non_speech_probability` for a row without one): a non-speech clip labelled with nothing (eos
    alone), a string of 2-7 of its speaker's words from `word_pools` (`join_words`: real recordings
    here are isolated words, and every epoch hears new strings), or the row itself.
    Then, for each example with probability `augment_probability` (the rest stay clean, which
    keeps learning fast in a short run) and, if `augment_sources` is given, only for rows of those
    sources (e.g. the few real people, whose voices are what is scarce), the waveform augmentations in `augmentations` (speed,
    reverb, noise, telephone, gain) and, after the log-mel (so not the waveform of input "both"), vocal
    tract length perturbation, an 8 kHz channel (`narrow_band`) and SpecAugment [9] masks.
    """

    def __init__(
        self,
        config: BRoPEASRConfig,
        tokenizer=None,
        augmentations: tuple[str, ...] = AUGMENTATIONS,
        word_pools: dict[str, list[dict]] | None = None,
        join_probability: float = 0.0,
        non_speech_probability: float = 0.0,
        augment_probability: float = 1.0,
        generator: torch.Generator | None = None,
        reader: "ClipReader | None" = None,
        augment_sources: tuple[str, ...] = (),
        vtlp_range: tuple[float, float] = VTLP_RANGE,
    ):
        unknown = set(augmentations) - set(AUGMENTATIONS)
        if unknown:
            raise ValueError(f"unknown augmentations {sorted(unknown)}; choose from {AUGMENTATIONS}")
        if word_pools and tokenizer is None:
            raise ValueError("joining words needs the tokenizer to label the joined strings")
        self.config, self.tokenizer, self.augmentations = config, tokenizer, frozenset(augmentations)
        self.word_pools = word_pools or {}
        self.join_probability, self.non_speech_probability = join_probability, non_speech_probability
        self.augment_probability, self.augment_sources = augment_probability, frozenset(augment_sources)
        self.vtlp_range = vtlp_range
        self.generator = generator
        self.reader = reader or ClipReader()
        self.frames = Counter()  # training batches' mel frames: "real" and "padded" (the padding fraction)
        self.longest = config.max_source_positions * HOP_LENGTH  # samples the model accepts
        self.features = BRoPEASRFeatureExtractor.from_model_config(config)  # the one path from audio to inputs

    def example(self, row: dict) -> tuple[torch.Tensor, list[int]] | None:
        """A training row -> (waveform, label ids) as its plan says (drawn here if the row has none); None if skipped."""
        clip, labels = self.reader(row), list(row["labels"])
        if clip is None:
            return None
        plan = row.get("plan") or draw_plan(row, self.word_pools, self.join_probability, self.non_speech_probability, self.generator)
        if plan.kind == "non_speech":
            return non_speech(int(plan.seconds * SAMPLE_RATE), plan.noise, self.generator), [self.config.eos_token_id]
        if plan.kind == "joined":
            pool = self.word_pools[row["speaker"]]
            words = [(word, pool[i]["text"]) for i in plan.words if (word := self.reader(pool[i])) is not None]
            if len(words) > 1:
                joined, text = join_words([w for w, _ in words], [t for _, t in words], plan.pauses[: len(words) - 1], self.generator)
                if len(joined) <= self.longest:
                    return joined, self.tokenizer(text, add_special_tokens=False).input_ids + [self.config.eos_token_id]
        return clip, labels

    def perturb(self, clip: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N',) with the waveform augmentations, in the order a signal meets them."""
        g = self.generator
        if "speed" in self.augmentations:
            speed = choice(SPEEDS, g)
            if len(clip) / speed <= self.longest:  # slowing down must not push the clip past what the model accepts
                clip = change_speed(clip, speed)
        if "reverb" in self.augmentations and uniform(0, 1, g) < 0.2:
            clip = reverberate(clip, uniform(0.1, 0.6, g), uniform(0, 12, g), g)
        if "noise" in self.augmentations and uniform(0, 1, g) < 0.3:
            clip = add_noise(clip, non_speech(len(clip), choice(NOISE_KINDS, g), g), uniform(10, 40, g))
        if "telephone" in self.augmentations and uniform(0, 1, g) < 0.15:
            clip = telephone_band(clip)
        if "gain" in self.augmentations:
            clip = clip * 10 ** (uniform(-10, 10, g) / 20)
        return clip

    def mask(self, inputs: dict[str, torch.Tensor], rows: list[int]):
        """Vocal tract length perturbation (alpha from U(vtlp_range)), an 8 kHz channel (`narrow_band` on NARROWBAND_SHARE of the rows)
        and SpecAugment masks, in place on `rows` of a batch.

        SpecAugment: two time masks of up to 5% of each clip on every input, two frequency masks of
        up to 10 mel bins on the log-mel.
        """
        g = self.generator
        lengths = inputs["attention_mask"].sum(1).tolist()
        frames = torch.arange(inputs["attention_mask"].shape[1])
        for row in rows:
            length = lengths[row]
            if "vtlp" in self.augmentations and "input_features" in inputs:
                inputs["input_features"][row, :, :length] = warp_frequencies(inputs["input_features"][row, :, :length], uniform(*self.vtlp_range, g))
            if "narrowband" in self.augmentations and "input_features" in inputs and uniform(0, 1, g) < NARROWBAND_SHARE:
                inputs["input_features"][row, :, :length] = narrow_band(inputs["input_features"][row, :, :length])
            if "specaugment" not in self.augmentations:
                continue
            width = max(1, length // 20)
            for _ in range(2):
                start = int(torch.randint(max(1, length - width), (), generator=g))
                drop = (frames >= start) & (frames < start + int(torch.randint(width + 1, (), generator=g)))
                if "input_features" in inputs:
                    inputs["input_features"][row, :, drop] = 0.0
                if "waveform" in inputs:
                    inputs["waveform"][row].view(-1, HOP_LENGTH)[drop] = 0.0
            if "input_features" in inputs:
                for _ in range(2):
                    start = int(torch.randint(self.config.num_mel_bins - 10, (), generator=g))
                    inputs["input_features"][row, start : start + int(torch.randint(11, (), generator=g)), :length] = 0.0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        training = bool(rows[0].get("augment"))
        if training:
            kept = [(row, example) for row in rows if (example := self.example(row)) is not None]
        else:
            kept = [(row, (clip, row["labels"])) for row in rows if (clip := self.reader(row)) is not None]
        if not kept:
            raise ValueError("every row of a batch was skipped: " + "; ".join(row.get("name", "?") for row in rows))
        examples = [example for _, example in kept]
        if training:
            varied = [i for i, (row, _) in enumerate(kept) if uniform(0, 1, self.generator) < self.augment_probability
                      and (not self.augment_sources or row.get("source", "") in self.augment_sources)]
            clips = [self.perturb(clip) if i in varied else clip for i, (clip, _) in enumerate(examples)]
        else:
            clips = [clip for clip, _ in examples]
        labels = [torch.as_tensor(ids) for _, ids in examples]
        inputs = dict(self.features(clips, sampling_rate=SAMPLE_RATE))
        if training and "plan" in rows[0]:  # planned batches carry their weight (PlannedBatches)
            inputs["loss_scale"] = torch.tensor(rows[0]["plan"].loss_scale)
        if training:
            self.mask(inputs, varied)
            self.frames.update(real=int(inputs["attention_mask"].sum()), padded=int((~inputs["attention_mask"]).sum()))
        inputs["labels"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        return inputs


def word_pools(split: Dataset, minimum: int = 10) -> dict[str, list[dict]]:
    """Each speaker's one-word rows, for speakers with at least `minimum` of them: what `join_words` joins.

    Built from the training split only, so no clip of a validation or test speaker can be joined in.
    Rows keep their audio undecoded; the collator's reader decodes them.
    """
    pools = {}
    for row in split:
        if row["speaker"] and row["text"] and " " not in row["text"]:
            pools.setdefault(row["speaker"], []).append(
                {"audio": row["audio"], "name": row.get("name"), "text": row["text"], "seconds": row.get("seconds", 0.0)})
    return {speaker: pool for speaker, pool in pools.items() if len(pool) >= minimum}


class PlannedBatches(torch.utils.data.Sampler):
    """Training batches of examples whose plans are drawn before their audio, optionally of like length.

    Every epoch (seeded by `seed` and the epoch): the rows in a random order, one plan each
    (`draw_plan`), then, `sorted_batches` batches at a time, those examples sorted by planned
    duration, cut into batches and the batches sent in a random order. With `sorted_batches` > 1 a
    batch pads to a duration near its own clips' instead of the longest clip of a random draw,
    while which clips share a window stays random (it costs accuracy per step: README, "Batches of
    like length"). Each batch's loss is scaled by its label tokens over the mean of its
    window's batches (`Plan.loss_scale`), so a token weighs as much as in random batches whatever the
    batch's length. 1 gives plain random batches. A row whose source is in `repeats`
    comes that many times an epoch (each time with a plan of its own). Items are (row index, plan) pairs,
    which `PlannedSplit` turns into rows; the DataLoader's batches of `batch_size` are these batches,
    and under torchrun accelerate hands each process whole batches.
    """

    def __init__(self, rows: list[dict], pools: dict[str, list[dict]], tokenizer, join_probability: float,
                 non_speech_probability: float, batch_size: int, sorted_batches: int, seed: int,
                 repeats: dict[str, int] | None = None):
        if sorted_batches < 1:
            raise ValueError(f"sorted_batches must be >= 1, got {sorted_batches}")
        self.rows, self.pools, self.tokenizer = rows, pools, tokenizer
        self.repeats = repeats or {}
        self.indices = [i for i, row in enumerate(rows) for _ in range(self.repeats.get(row.get("source", ""), 1))]
        self.join_probability, self.non_speech_probability = join_probability, non_speech_probability
        self.batch_size, self.sorted_batches, self.seed, self.epoch = batch_size, sorted_batches, seed, 0

    def set_epoch(self, epoch: int):
        """Trainer calls this at every epoch: each epoch has its own order and plans."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0]))
        order = [self.indices[k] for k in torch.randperm(len(self.indices), generator=generator).tolist()]
        plans = [self.counted(self.rows[i], draw_plan(self.rows[i], self.pools, self.join_probability, self.non_speech_probability, generator))
                 for i in order]
        window = self.batch_size * self.sorted_batches
        for start in range(0, len(order), window):
            ranked = sorted(range(start, min(start + window, len(order))), key=lambda j: plans[j].seconds)
            batches = [ranked[k : k + self.batch_size] for k in range(0, len(ranked), self.batch_size)]
            # The model's loss is a mean over its batch's tokens, so a batch of short clips would weigh
            # each of its few tokens as much as a batch of long strings weighs its many: scaling each
            # batch by its tokens over the window's mean gives every token the weight it has in random batches.
            tokens = [sum(plans[j].tokens for j in batch) for batch in batches]
            mean = sum(tokens) / len(ranked) * self.batch_size
            scaled = [[(order[j], replace(plans[j], loss_scale=count / mean)) for j in batch] for batch, count in zip(batches, tokens)]
            full = [batch for batch in scaled if len(batch) == self.batch_size]  # a short one (the epoch's end) goes last,
            for b in torch.randperm(len(full), generator=generator).tolist():  # so every batch stays aligned
                yield from full[b]
            yield from (item for batch in scaled[len(full):] for item in batch)

    def counted(self, row: dict, plan: Plan) -> Plan:
        """`plan` with its label tokens: the row's own, one (eos) for non-speech, or the joined words' transcript's."""
        if plan.kind == "non_speech":
            return replace(plan, tokens=1)
        if plan.kind == "joined":
            text = " ".join(self.pools[row["speaker"]][w]["text"] for w in plan.words)
            return replace(plan, tokens=len(self.tokenizer(text, add_special_tokens=False).input_ids) + 1)
        return replace(plan, tokens=len(row["labels"]))


class PlannedSplit(torch.utils.data.Dataset):
    """The training split indexed by the (row index, plan) pairs of `PlannedBatches`: each row with its plan."""

    def __init__(self, split: Dataset):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, Plan]) -> dict:
        index, plan = item
        return {**self.split[index], "plan": plan}


# ------------------------------------------------------------------------------------------- training


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops before saving a broken model."""


MIXES = ("gate", "blend_logit", "log_temperature", "input_blend_logit")  # the learned mixes' parameter names


def mix_kind(name: str) -> str:
    """A parameter's full name -> its last part, which is one of MIXES for a learned mix."""
    return name.rsplit(".", 1)[-1]


def mix_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The learned mixes (betweenness gates, attention blends and temperatures, the input blend) by full name."""
    return {name: p for name, p in model.named_parameters() if mix_kind(name) in MIXES}


def length_parts(inputs: dict[str, torch.Tensor], count: int) -> list[dict[str, torch.Tensor]]:
    """A padded batch cut into `count` parts of clips of like length, each cropped to its own longest clip and label.

    The clips are ordered by length and split into `count` nearly equal runs, so a part of short
    clips no longer carries the padding of the batch's longest one. The model's outputs for a clip
    do not depend on its padding (tested), so the parts' losses, weighed by their label tokens, sum
    to the batch's.
    Args:
        inputs: a training batch: attention_mask (B, T) bool, input_features (B, M, T) and/or
            waveform (B, T x HOP_LENGTH), labels (B, S) with -100 as padding.
        count: how many parts (at most B).
    Returns:
        the parts, shortest clips first, with the same keys.
    """
    lengths = inputs["attention_mask"].sum(1)
    parts = []
    for rows in torch.argsort(lengths, stable=True).tensor_split(min(count, len(lengths))):
        frames, tokens = int(lengths[rows].max()), int((inputs["labels"][rows] != -100).sum(1).max())
        part = {"attention_mask": inputs["attention_mask"][rows, :frames], "labels": inputs["labels"][rows, :tokens]}
        if "input_features" in inputs:
            part["input_features"] = inputs["input_features"][rows, :, :frames]
        if "waveform" in inputs:
            part["waveform"] = inputs["waveform"][rows, : frames * HOP_LENGTH]
        parts.append(part)
    return parts


class WeightAverage(TrainerCallback):
    """An exponential moving average of the model's trainable weights (Polyak averaging), which
    evaluation and checkpoints use in place of the weights themselves.

    After optimizer step t the average moves toward the weights by 1 - d_t, d_t = min(decay,
    (1 + t) / (10 + t)): early on, when the weights move fast and the start is noise, the average
    follows them closely; from a few hundred steps on it remembers about 1 / (1 - decay) steps.
    `swapped()` exchanges the average and the weights in place (no second model), so evaluation and
    a saved checkpoint see the average while training goes on from its own weights.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.average = [p.detach().clone() for _, p in self.named]

    def on_step_end(self, args, state, control, **kwargs):
        t = state.global_step
        weights = [p.detach() for _, p in self.named]
        torch._foreach_lerp_(self.average, weights, 1 - min(self.decay, (1 + t) / (10 + t)))  # as torch's swa_utils

    @contextmanager
    def swapped(self):
        """Within the block the model holds the average (and `average` the weights); swapped back after."""
        self.swap()
        try:
            yield
        finally:
            self.swap()

    @torch.no_grad()
    def swap(self):
        """Exchange the average and the weights in place."""
        for (_, p), a in zip(self.named, self.average):
            kept = p.detach().clone()
            p.copy_(a)
            a.copy_(kept)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The half not in the model, by parameter name (during `swapped()`: the weights training goes on from)."""
        return {name: a for (name, _), a in zip(self.named, self.average)}

    def load_state_dict(self, state: dict[str, torch.Tensor]):
        with torch.no_grad():
            for (name, _), a in zip(self.named, self.average):
                a.copy_(state[name])


class ASRTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that stops on a non-finite loss, naming the step, instead of training on, and
    gives the learned mixes their own optimizer group: no weight decay (decay would pull each mix
    toward "off") and the learning rate times `mix_learning_rate_scale`, draws training batches
    from `train_sampler` when one is given (`PlannedBatches`), and runs each training batch's
    forward and backward in `micro_batches` passes over clips of like length (`length_parts`),
    whose token-weighted losses sum to the batch's: the same step with less padding (in one
    process: `splits_batches`). With `ema_decay` > 0 it keeps a moving average
    of the weights (`WeightAverage`) that evaluation, checkpoints, and so the best model kept at the
    end, use instead of the weights; each checkpoint also holds the weights themselves
    (`TRAINING_WEIGHTS`), from which `--resume` goes on.
    """

    def __init__(self, *args, mix_learning_rate_scale: float = 1.0, train_sampler: torch.utils.data.Sampler | None = None,
                 micro_batches: int = 1, ema_decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.mix_learning_rate_scale, self.train_sampler, self.micro_batches = mix_learning_rate_scale, train_sampler, micro_batches
        self.frames = Counter()  # mel frames the model processed in training: "real" and "padded"
        self.weight_average = WeightAverage(self.model, ema_decay) if ema_decay else None
        if self.weight_average is not None:
            self.add_callback(self.weight_average)

    def averaged(self):
        """A block in which the model holds the weight average (a no-op without one)."""
        return self.weight_average.swapped() if self.weight_average is not None else nullcontext()

    def train(self, *args, **kwargs):
        output = super().train(*args, **kwargs)
        if self.weight_average is not None:  # the model is now the best checkpoint's average; without one loaded, take the last average
            if not (self.args.load_best_model_at_end and self.state.best_model_checkpoint):
                self.weight_average.swap()
            self.remove_callback(self.weight_average)
            self.weight_average = None
        return output

    def evaluate(self, *args, **kwargs):
        with self.averaged():
            return super().evaluate(*args, **kwargs)

    def _save_checkpoint(self, model, trial):
        with self.averaged():  # the checkpoint's model is the average; the weights training goes on from sit beside it
            super()._save_checkpoint(model, trial)
            if self.weight_average is not None and self.args.should_save:
                folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
                torch.save(self.weight_average.state_dict(), folder / TRAINING_WEIGHTS)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)  # the model now holds the checkpoint's average
        if self.weight_average is not None:
            path = Path(resume_from_checkpoint) / TRAINING_WEIGHTS
            if not path.exists():
                raise ValueError(f"{resume_from_checkpoint} has no {TRAINING_WEIGHTS}: it was saved without --ema-decay; "
                                 "resume with the flags it was trained with")
            self.weight_average.load_state_dict(torch.load(path, weights_only=True))
            self.weight_average.swap()

    def splits_batches(self) -> bool:
        """Whether training batches run as micro-batches: not under torchrun, where DDP reduces gradients at
        every backward and expects each to reach every parameter (a part of non-speech alone has a
        one-token decoder, whose bRoPE gate then gets none)."""
        return self.micro_batches > 1 and self.accelerator.num_processes == 1

    def training_step(self, model, inputs, num_items_in_batch=None):
        whole = not self.splits_batches()
        parts = [inputs] if whole else length_parts(inputs, self.micro_batches)
        for part in parts:
            self.frames.update(real=int(part["attention_mask"].sum()), padded=int((~part["attention_mask"].bool()).sum()))
        if whole:
            return super().training_step(model, inputs, num_items_in_batch)
        scale = inputs.pop("loss_scale", 1.0)  # a planned batch's own weight, shared by its parts
        tokens = [int((part["labels"] != -100).sum()) for part in parts]
        return sum(super(ASRTrainer, self).training_step(model, {**part, "loss_scale": scale * count / sum(tokens)}, num_items_in_batch)
                   for part, count in zip(parts, tokens))

    def _get_train_sampler(self, train_dataset=None):
        return self.train_sampler or super()._get_train_sampler(train_dataset)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            mixes = mix_parameters(model)
            decay = set(self.get_decay_parameter_names(model)) - set(mixes)
            named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
            groups = [
                {"params": [p for name, p in named if name in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for name, p in named if name not in decay and name not in mixes], "weight_decay": 0.0},
                {"params": list(mixes.values()), "weight_decay": 0.0,
                 "lr": self.args.learning_rate * self.mix_learning_rate_scale},
            ]
            optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            self.optimizer = optimizer_class([group for group in groups if group["params"]], **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scale = inputs.pop("loss_scale", None)  # a planned batch's weight (PlannedBatches); the model never sees it
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if scale is not None and model.training:
            result = (result[0] * scale, *result[1:]) if return_outputs else result * scale
        loss = result[0] if return_outputs else result
        if model.training and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1}; stopping without saving "
                "(lower --learning-rate or check the data)"
            )
        return result


def decode_prediction(prediction, tokenizer) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """A Trainer prediction -> (hypotheses, references, generated ids aligned to the labels, labels with -100
    on every position that is not the transcript or its eos).

    Seq2SeqTrainer pads each batch's labels to the generation length with the pad token, not -100;
    padding never is a target, so those positions are ignored too, or the token scores would count a
    decode's own padding after eos as correct tokens (greedy search pads with the pad token, beam
    search with eos).
    """
    generated, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    labels = np.where(labels == tokenizer.pad_token_id, -100, labels)
    generated = np.where(generated < 0, tokenizer.pad_token_id, generated)[:, 1:]
    width = labels.shape[1]
    aligned = np.full_like(labels, tokenizer.pad_token_id)
    aligned[:, : min(width, generated.shape[1])] = generated[:, :width]
    hypotheses = tokenizer.batch_decode(generated, skip_special_tokens=True)
    references = tokenizer.batch_decode(np.where(labels < 0, tokenizer.pad_token_id, labels), skip_special_tokens=True)
    return hypotheses, references, aligned, labels


def error_rates_by_source(hypotheses: list[str], references: list[str], sources: list[str]) -> dict[str, float]:
    """WER and CER of each source (e.g. "espeak-ng", "fsdd") as {"wer_<source>": ..., "cer_<source>": ...}."""
    results = {}
    for source in sorted(set(sources) - {""}):
        rows = [i for i, s in enumerate(sources) if s == source]
        results[f"wer_{source}"] = word_error_rate([hypotheses[i] for i in rows], [references[i] for i in rows])
        results[f"cer_{source}"] = char_error_rate([hypotheses[i] for i in rows], [references[i] for i in rows])
    return results


def false_words_per_minute(model, tokenizer, clips_per_kind: int = 6, seed: int = 1234) -> dict[str, float]:
    """Words transcribed per minute of non-speech, for each of NON_SPEECH_KINDS and over all of them.

    The clips (0.5-4 s, from a generator seeded apart from training) must all transcribe to nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    kinds = [kind for kind in NON_SPEECH_KINDS for _ in range(clips_per_kind)]
    clips = [non_speech(int(uniform(0.5, 4.0, generator) * SAMPLE_RATE), kind, generator) for kind in kinds]
    texts = transcribe(model, tokenizer, clips)  # one batch: one decoding loop, however many kinds
    words, seconds = Counter(), Counter()
    for kind, clip, text in zip(kinds, clips, texts):
        words[kind] += len(text.split())
        seconds[kind] += len(clip) / SAMPLE_RATE
    rates = {kind: 60 * words[kind] / seconds[kind] for kind in NON_SPEECH_KINDS}
    rates["all"] = 60 * sum(words.values()) / sum(seconds.values())
    return rates


def metrics_function(tokenizer):
    """compute_metrics for Seq2SeqTrainer: WER and CER of the generated transcripts, and token scores.

    Token scores compare the generated ids with the labels position by position (the decoder
    start token dropped), so a missing or extra character shifts and costs the rest of the line.
    """

    def compute(prediction):
        hypotheses, references, aligned, labels = decode_prediction(prediction, tokenizer)
        return {
            "wer": word_error_rate(hypotheses, references),
            "cer": char_error_rate(hypotheses, references),
            **token_scores(aligned, labels),
        }

    return compute


def write_csv(path: Path, rows: list[dict], columns):
    """Write `rows` as CSV; return matplotlib.pyplot (headless) for a figure beside it, or None without matplotlib."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


class MetricsTable(TrainerCallback):
    """Prints one table row per evaluation (losses, WER, CER, token accuracy, precision, recall, F1) and keeps the history."""

    COLUMNS = ("step", "train_loss", "eval_loss", "wer", "cer", "accuracy", "precision", "recall", "f1")

    def __init__(self):
        self.rows, self.train_loss = [], float("nan")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.train_loss = logs["loss"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        row = {"step": state.global_step, "train_loss": self.train_loss}
        row.update({name: metrics[f"eval_{name}"] for name in ("loss",) + self.COLUMNS[3:]})
        row["eval_loss"] = row.pop("loss")
        self.rows.append(row)
        if state.is_world_process_zero:
            if len(self.rows) == 1:
                print("\n" + " | ".join(f"{name:>10}" for name in self.COLUMNS))
            print(" | ".join(f"{row[name]:>10}" if name == "step" else f"{row[name]:>10.4f}" for name in self.COLUMNS))

    def save(self, path: Path):
        """Write the history as CSV, and as a PNG of loss and WER curves when matplotlib is installed."""
        plt = write_csv(path / "metrics.csv", self.rows, self.COLUMNS)
        if plt is None:
            return
        steps = [row["step"] for row in self.rows]
        figure, (losses, wer) = plt.subplots(1, 2, figsize=(10, 4))
        losses.plot(steps, [row["train_loss"] for row in self.rows], label="training")
        losses.plot(steps, [row["eval_loss"] for row in self.rows], label="validation")
        losses.set(xlabel="step", ylabel="cross-entropy", title="loss")
        losses.legend()
        wer.plot(steps, [100 * row["wer"] for row in self.rows])
        wer.set(xlabel="step", ylabel="WER (%)", title="validation WER (greedy decoding)")
        figure.tight_layout()
        figure.savefig(path / "curves.png", dpi=100)
        plt.close(figure)


class MixTracker(TrainerCallback):
    """How the learned mixes move, every `every` steps: their values, how consistent the sign of their
    gradient is, and how far they and the other weights move per step. Written to `mixes.csv`
    (and plotted in `mixes.png` when matplotlib is installed).

    Per kind of mix (betweenness gate tanh(g), attention blend sigmoid(b), temperature exp(t), input
    blend sigmoid(l)), over each window of `every` steps: `value`, the mean over layers and heads at
    the window's end; `consistency` = |sum of gradients| / sum of |gradients| (1: every step pushed
    the same way; near 0: the pushes cancel, so Adam's updates, about the learning rate each, walk
    randomly); `step_size`, the mean |change| of the raw parameter per step. `other_step_size`: the
    same for every other weight, the yardstick.

    With bRoPE, the betweenness score of the window's last training step (its real batch, every
    layer), for the encoder and the decoder apart: `score_<part>_mean` over the tokens that have a
    full triple, `score_<part>_spread`, its standard deviation within a clip (averaged over clips and
    layers), and `shift_<part>_spread` = max_shift |tanh g| times that spread, in tokens. Only the
    spread can move attention: a shift shared by every token of a clip cancels in q.k.
    """

    VALUES = {"gate": torch.tanh, "blend_logit": torch.sigmoid, "log_temperature": torch.exp, "input_blend_logit": torch.sigmoid}

    def __init__(self, every: int = 50):
        self.every, self.rows = every, []
        self.grad_sum, self.grad_abs, self.start = {}, {}, {}
        self.measuring, self.scores, self.hooks = False, [], []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.snapshot(model)
        self.hooks = [m.register_forward_hook(self.record_score, with_kwargs=True) for m in model.modules() if isinstance(m, BetweennessShift)]

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self.hooks:
            hook.remove()
        self.hooks = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.measuring = bool(self.hooks) and (state.global_step + 1) % self.every == 0

    def record_score(self, module: BetweennessShift, inputs: tuple, kwargs: dict, shift: torch.Tensor):
        """Forward hook: the score's mean and within-clip spread over the tokens with a full triple (score > 0)."""
        if not self.measuring:
            return
        with torch.no_grad():
            score = module.score(inputs[0], kwargs["causal"], kwargs.get("valid"))[:, 0]  # (B, S)
            full = score > 0  # d(a, c) >= eps, so only tokens without a full triple score exactly 0
            count = full.sum(-1)  # (B,)
            mean = (score * full).sum(-1) / count.clamp(min=1)
            spread = (((score - mean[:, None]) * full).square().sum(-1) / count.clamp(min=1)).sqrt()  # (B,)
            clips = count > 1
            self.scores.append({
                "part": "decoder" if kwargs["causal"] else "encoder",
                "sum": (score * full).sum().item(), "count": full.sum().item(),
                "spread": spread[clips].mean().item() if clips.any() else float("nan"),
                "shift_scale": module.max_shift * torch.tanh(module.gate).abs().item(),
            })

    def snapshot(self, model):
        self.start = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        self.grad_sum, self.grad_abs = {}, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, p in mix_parameters(model).items():
            if p.grad is not None:
                kind = mix_kind(name)
                self.grad_sum[kind] = self.grad_sum.get(kind, 0.0) + p.grad.detach().clone()
                self.grad_abs[kind] = self.grad_abs.get(kind, 0.0) + p.grad.detach().abs()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every:
            return
        mixes = mix_parameters(model)
        row = {"step": state.global_step}
        moved = {name: (p.detach() - self.start[name]).abs() / self.every for name, p in model.named_parameters() if name in self.start}
        for kind in MIXES:
            names = [name for name in mixes if mix_kind(name) == kind]
            if not names:
                continue
            row[f"{kind}_value"] = torch.cat([self.VALUES[kind](mixes[n].detach()).flatten() for n in names]).mean().item()
            if kind in self.grad_sum:
                row[f"{kind}_consistency"] = (self.grad_sum[kind].abs().sum() / self.grad_abs[kind].sum().clamp(min=1e-30)).item()
            row[f"{kind}_step_size"] = torch.cat([moved[n].flatten() for n in names]).mean().item()
        others = [moved[name].flatten() for name in moved if name not in mixes]
        row["other_step_size"] = torch.cat(others).mean().item()
        for part in ("encoder", "decoder"):
            seen = [entry for entry in self.scores if entry["part"] == part]
            if seen:
                row[f"score_{part}_mean"] = sum(e["sum"] for e in seen) / max(sum(e["count"] for e in seen), 1)
                row[f"score_{part}_spread"] = float(np.nanmean([e["spread"] for e in seen]))
                row[f"shift_{part}_spread"] = float(np.nanmean([e["spread"] * e["shift_scale"] for e in seen]))
        self.rows.append(row)
        self.scores, self.measuring = [], False
        self.snapshot(model)

    def save(self, path: Path):
        if not self.rows:
            return
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        plt = write_csv(path / "mixes.csv", self.rows, columns)
        if plt is None:
            return
        kinds = [kind for kind in MIXES if f"{kind}_value" in columns]
        parts = [part for part in ("encoder", "decoder") if f"score_{part}_mean" in columns]
        figure, axes = plt.subplots(1, 3 + bool(parts), figsize=(14 + 5 * bool(parts), 4))
        steps = [row["step"] for row in self.rows]
        for part in parts:
            for name, style in (("score_{}_mean", "-"), ("score_{}_spread", "--"), ("shift_{}_spread", ":")):
                column = name.format(part)
                axes[3].plot(steps, [row.get(column, float("nan")) for row in self.rows], style, label=column)
        if parts:
            axes[3].set(xlabel="step", title="betweenness score; shift spread (tokens)")
        for kind in kinds:
            axes[0].plot(steps, [row[f"{kind}_value"] for row in self.rows], label=kind)
            axes[1].plot(steps, [row.get(f"{kind}_consistency", float("nan")) for row in self.rows], label=kind)
            axes[2].plot(steps, [row[f"{kind}_step_size"] for row in self.rows], label=kind)
        axes[2].plot(steps, [row["other_step_size"] for row in self.rows], label="other weights", color="black")
        axes[0].set(xlabel="step", title="value (tanh gate, sigmoid blends, exp temperature)")
        axes[1].set(xlabel="step", title="gradient sign consistency |sum g| / sum |g|")
        axes[2].set(xlabel="step", yscale="log", title="mean |change| per step")
        for axis in axes:
            axis.legend()
        figure.tight_layout()
        figure.savefig(path / "mixes.png", dpi=100)
        plt.close(figure)


def parse_augmentations(spec: str) -> tuple[str, ...]:
    """--augment's value ("all", "none", or names joined by commas) -> the augmentation names."""
    if spec == "all":
        return AUGMENTATIONS
    if spec == "none":
        return ()
    names = tuple(name.strip() for name in spec.split(",") if name.strip())
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"--augment: unknown {unknown}; choose from {', '.join(AUGMENTATIONS)}, or all, or none")
    return names


def parse_vtlp_range(spec: str) -> tuple[float, float]:
    """--vtlp-range's "LOW,HIGH" -> (LOW, HIGH), with 0 < LOW <= HIGH (1 is no warp)."""
    try:
        low, high = (float(x) for x in spec.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{spec!r} is not two numbers LOW,HIGH (e.g. 0.9,1.1)") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"{spec!r}: need 0 < LOW <= HIGH")
    return low, high


def augmentation_plan(args: argparse.Namespace, train: Dataset | IterableDataset) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(augmentations, the sources whose training rows they vary, () for all) from --augment and --augment-sources.

    With no --augment, DEFAULT_AUGMENTATIONS on the rows of DEFAULT_AUGMENT_SOURCES the training split has (a corpus
    without them, or a stream, whose sources are not known in advance, gets none). --augment-sources naming a source
    the training split lacks is an error, as a misspelt name would vary nothing.
    """
    sources = set() if isinstance(train, IterableDataset) else set(train.unique("source"))
    if not isinstance(train, IterableDataset):
        require_sources("--augment-sources", args.augment_sources, sources)
    if args.augment is not None or args.augment_sources:
        return parse_augmentations(args.augment or ",".join(DEFAULT_AUGMENTATIONS)), args.augment_sources
    present = tuple(source for source in DEFAULT_AUGMENT_SOURCES if source in sources)
    return (DEFAULT_AUGMENTATIONS, present) if present else ((), ())


def require_sources(flag: str, named, sources: set[str]) -> None:
    """Raise `ValueError` if `flag` names sources the training split lacks: a misspelt name would silently do nothing."""
    missing = set(named) - sources
    if missing:
        raise ValueError(f"{flag} names sources the training split does not have: "
                         f"{', '.join(sorted(missing))} (it has: {', '.join(sorted(sources))})")


def parse_repeats(spec: str) -> dict[str, int]:
    """"fsdd=2,espeak-ng=1" -> {"fsdd": 2, "espeak-ng": 1}; "" -> {}."""
    repeats = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        source, _, count = item.partition("=")
        if not source or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"source repeats are SOURCE=N with N a whole number >= 1, got {item!r}")
        repeats[source] = int(count)
    return repeats


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; `argv` None reads sys.argv."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=("small", "base"), default="small", help="model size")
    model.add_argument("--input-mode", choices=("spectrogram", "waveform", "both"), default="spectrogram")
    model.add_argument("--betweenness", action=argparse.BooleanOptionalAction, default=False, help="bRoPE position shifts")
    model.add_argument("--betweenness-max-shift", type=float, help="bRoPE's bound on a position shift, in tokens (preset: 2)")
    model.add_argument("--betweenness-gate-init", type=float,
                       help="bRoPE's tanh(gate) at the start, in (-1, 1) (preset: 0, which starts as plain RoPE)")
    model.add_argument("--blend-attention", action=argparse.BooleanOptionalAction, default=False, help="dot/cosine blend")
    model.add_argument("--ctc-weight", type=float, help="weight of the auxiliary CTC loss (0 = off; default: the preset's)")
    model.add_argument("--ctc-rescoring-weight", type=float,
                       help="L: beam search keeps each clip's best (1 - L) log p_att + L log p_CTC (0 = the beam's order; default: the config's)")
    model.add_argument("--ctc-outputs-per-frame", type=int,
                       help="k: CTC symbols per encoder frame, so fast speech can align (default: the preset's)")
    model.add_argument("--normalize-features", action=argparse.BooleanOptionalAction, help="per-clip log-mel mean removal (default: the preset's)")
    model.add_argument("--spectrogram-floor-db", type=float,
                       help="raise every log-mel cell to the clip's loudest minus this many dB (0: Whisper's 80; default: the preset's)")
    model.add_argument("--normalize-variance", action=argparse.BooleanOptionalAction,
                       help="per-clip log-mel variance normalization too, each bin to unit std (default: the preset's)")
    model.add_argument("--absolute-positions", action=argparse.BooleanOptionalAction, default=None,
                       help="add sinusoidal absolute positions to the encoder states (default: the preset's)")
    model.add_argument("--spectrogram-max-hz", type=float, metavar="HZ",
                       help="the spectrogram front end reads the mel bins centred below HZ only; 0 for all (default: the preset's)")
    model.add_argument("--dropout", type=float, help="residual and embedding dropout (default: the preset's)")
    model.add_argument("--label-smoothing", type=float, help="label smoothing of the training loss (default: the preset's; 0 = plain)")
    model.add_argument("--encoder-layers", type=int, help="transformer blocks in the encoder (default: the preset's)")
    model.add_argument("--decoder-layers", type=int, help="transformer blocks in the decoder (default: the preset's)")
    model.add_argument("--downsampling-factor", type=int, choices=(1, 2, 4, 8), help="mel frames per encoder frame (default: the preset's)")
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default=str(DATA_DIR), help="folder with metadata.csv (file_name,transcription,split)")
    data.add_argument("--dataset", help="instead of --data-dir: a Hugging Face hub dataset (needs the network), a local audio "
                      "folder (metadata.csv/.jsonl with file_name), a local folder of parquet shards, or one .parquet/.csv/.jsonl file with a split column")
    data.add_argument("--dataset-config", help="the hub dataset's configuration name")
    data.add_argument("--train-split", default="train")
    data.add_argument("--eval-split", default="validation")
    data.add_argument("--test-split", default="test", help="empty to skip the final test")
    data.add_argument("--hold-out-speaker", help="train and validate without this speaker and test on all their clips "
                      "instead of the test split (which is not read)")
    data.add_argument("--text-column", default="text")
    data.add_argument("--audio-column", default="audio")
    data.add_argument("--tokenizer", help="bpe:N trains a byte-level BPE of at most N tokens on the training transcripts; "
                      "a path loads a saved Hugging Face tokenizer; default: characters")
    data.add_argument("--on-bad-audio", choices=("skip", "error"), default="skip", help="skip bad rows with a warning, or stop listing them")
    data.add_argument("--audio-cache-mb", type=float, default=1024,
                      help="decoded clips kept in memory up to this size; the rest are decoded again when next used")
    data.add_argument("--augment", help=f"comma-separated augmentations from {','.join(AUGMENTATIONS)}, or all, or none; "
                      f"default: {','.join(DEFAULT_AUGMENTATIONS)} on the rows of {','.join(DEFAULT_AUGMENT_SOURCES)} (those a corpus has)")
    data.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")
    data.add_argument("--join-probability", type=float, default=0.6, help="chance that a one-word training clip becomes a string of its speaker's words")
    data.add_argument("--augment-probability", type=float, default=1.0, help="share of training examples augmented (the rest stay clean)")
    data.add_argument("--vtlp-range", type=parse_vtlp_range, default=VTLP_RANGE, metavar="LOW,HIGH",
                      help=f"vocal tract length perturbation's warp factor is drawn from U(LOW, HIGH); default: {VTLP_RANGE[0]},{VTLP_RANGE[1]}")
    data.add_argument("--augment-sources", type=lambda spec: tuple(s for s in spec.split(",") if s), default=(),
                      help="comma-separated sources whose training rows are augmented (e.g. fsdd); default: all (with --augment)")
    data.add_argument("--streaming", action="store_true",
                      help="read the training split as a stream (shuffled in a buffer, sharded among processes); needs --max-steps")
    data.add_argument("--shuffle-buffer", type=int, default=1000, help="with --streaming: rows in the shuffle buffer")
    data.add_argument("--group-by-length", action="store_true",
                      help="batch training clips of similar length (transformers' length-grouped sampler on each clip's duration)")
    data.add_argument("--non-speech", type=float, default=0.08, help="share of training examples replaced by non-speech labelled empty")
    data.add_argument("--source-repeats", type=parse_repeats,
                      help="SOURCE=N,...: training rows of these sources come N times an epoch; '' for once each "
                           "(default fsdd=2,mbrola=2,pico=2: the embedded corpus's real people and other engines heard twice; "
                           "a source the corpus lacks is an error when named here, ignored in the default)")
    data.add_argument("--sorted-batches", type=int, default=1,
                      help="make training batches this many at a time from examples sorted by planned duration (1 = random batches)")
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", default="runs/small")
    train.add_argument("--max-steps", type=int, help=f"optimizer steps (default {DEFAULT_MAX_STEPS}; required with --streaming)")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--micro-batches", type=int, default=2,
                       help="run each training batch in this many passes over clips of like length (the same step, less padding; 1 = whole)")
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--mix-learning-rate-scale", type=float, default=1.0,
                       help="learning rate of the learned mixes (gates, blends, temperatures) relative to the rest")
    train.add_argument("--warmup-steps", type=int, default=100)
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW's decoupled weight decay (never on biases, norms or the learned mixes)")
    train.add_argument("--ema-decay", type=float, default=0.0,
                       help="evaluate, keep and test a moving average of the weights with this decay (0 = off: the weights themselves)")
    train.add_argument("--eval-steps", type=int, default=500, help="evaluate (and checkpoint) every this many steps")
    train.add_argument("--num-beams", type=int,
                       help=f"beam width of the final validation and test decoding, saved with the model "
                            f"(default: {RESCORING_BEAMS} with CTC rescoring, else 1 = greedy)")
    train.add_argument("--eval-num-beams", type=int, default=1,
                       help="beam width of the evaluations during training, which pick the checkpoint (1 = greedy)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU or CPU; on a CPU measured faster only at the base preset: README, bfloat16 on a CPU)")
    train.add_argument("--compile", action="store_true", help="torch.compile the model (transformers' torch_compile); off by default, see README")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace):
    """Refuse flag combinations that cannot work together, with a `ValueError` naming them."""
    if args.max_steps is None and args.streaming:
        raise ValueError("--streaming needs --max-steps: a stream has no length to count epochs by")
    if args.streaming and args.group_by_length:
        raise ValueError("--group-by-length needs every clip's length up front; it cannot be combined with --streaming")
    if args.source_repeats and (args.streaming or args.group_by_length):
        raise ValueError("--source-repeats needs the planned batches, which --streaming and --group-by-length replace")
    if not 0 <= args.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1) (0 = off), got {args.ema_decay}")
    if args.sorted_batches < 1:
        raise ValueError(f"--sorted-batches must be at least 1 (1 = random batches), got {args.sorted_batches}")
    for flag, beams in (("--num-beams", args.num_beams), ("--eval-num-beams", args.eval_num_beams)):
        if beams is not None and beams < 1:
            raise ValueError(f"{flag} must be at least 1 (1 = greedy), got {beams}")


def make_tokenizer(args: argparse.Namespace, train: Dataset | IterableDataset):
    """The tokenizer `--tokenizer` asks for: characters of the training transcripts (default), a BPE trained on them, or a saved one."""
    if args.streaming:  # the tokenizer learns from the stream's first rows
        train_texts = [normalize_text(row["text"]) for row in train.select_columns(["text"]).take(TOKENIZER_ROWS)]
    else:
        train_texts = [normalize_text(text) for text in train["text"]]
    if args.tokenizer and args.tokenizer.startswith("bpe:"):
        return build_bpe_tokenizer(train_texts, int(args.tokenizer.removeprefix("bpe:")))
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if None in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id):
            raise ValueError(f"tokenizer {args.tokenizer} needs pad, bos and eos tokens")
        return tokenizer
    return build_tokenizer(train_texts)


# The model flags that keep the preset's value when unset (None): argparse name -> config field.
PRESET_FLAGS = {
    "ctc_weight": "ctc_weight",
    "ctc_rescoring_weight": "ctc_rescoring_weight",
    "ctc_outputs_per_frame": "ctc_outputs_per_frame",
    "downsampling_factor": "downsampling_factor",
    "dropout": "dropout",
    "label_smoothing": "label_smoothing",
    "encoder_layers": "encoder_layers",
    "decoder_layers": "decoder_layers",
    "absolute_positions": "absolute_encoder_positions",
    "normalize_features": "normalize_features",
    "normalize_variance": "normalize_feature_variance",
    "spectrogram_floor_db": "spectrogram_floor_db",
    "spectrogram_max_hz": "spectrogram_max_hz",
    "betweenness_max_shift": "betweenness_max_shift",
    "betweenness_gate_init": "betweenness_gate_init",
}
ZERO_IS_NONE = ("spectrogram_floor_db", "spectrogram_max_hz")  # 0 on the command line: the field's None (80 dB, all bins)


def make_config(args: argparse.Namespace, tokenizer) -> BRoPEASRConfig:
    """The preset with the tokenizer's ids and the model flags applied (a flag left unset keeps the preset's value)."""
    overrides = {field: getattr(args, flag) for flag, field in PRESET_FLAGS.items() if getattr(args, flag) is not None}
    overrides.update({field: overrides[field] or None for field in ZERO_IS_NONE if field in overrides})
    return BRoPEASRConfig.from_preset(
        args.preset,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        input_mode=args.input_mode,
        use_betweenness=args.betweenness,
        blend_attention=args.blend_attention,
        **overrides,
    )


def training_arguments(args: argparse.Namespace, max_label: int) -> Seq2SeqTrainingArguments:
    """The run's `Seq2SeqTrainingArguments`: cosine schedule, evaluation and checkpoints every --eval-steps,
    the best validation WER kept, generation bounded by the longest transcript (`max_label` tokens)."""
    return Seq2SeqTrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        accelerator_config={"dispatch_batches": False},  # a stream's shards are split among processes, each reads its own
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        length_column_name="seconds",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,  # the checkpoint with the best validation WER is the one saved and tested
        metric_for_best_model="wer",
        greater_is_better=False,
        logging_steps=min(50, args.eval_steps),
        predict_with_generate=True,
        generation_max_length=max_label + 1,  # start token + the longest transcript: no runaway decoding
        generation_num_beams=args.eval_num_beams,  # the final scores decode with --num-beams (`score_by_source`)
        remove_unused_columns=False,  # keep the audio, its name and the speaker for the collator
        label_names=["labels"],
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        bf16=args.bf16,
        torch_compile=args.compile,
        ddp_find_unused_parameters=False,  # every built parameter is used (unused branches are not built)
        dataloader_num_workers=0,  # measured: a worker process beside 2 compute threads made steps no faster
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU run DDP (gloo) rather than N copies
    )


def print_setup(model, config: BRoPEASRConfig, tokenizer, prepared: dict, args: argparse.Namespace, augmentations: tuple[str, ...],
                augment_sources: tuple[str, ...], pools: dict, planner: "PlannedBatches | None"):
    """What the run trains: the initialization report, clip counts, the switches and the data recipe."""
    model.initialization_report()
    counts = ", ".join(f"{key} {'streamed' if isinstance(split, IterableDataset) else len(split)}" for key, split in prepared.items())
    print(f"clips: {counts}; vocabulary {len(tokenizer)}; input_mode {config.input_mode}, "
          f"betweenness {config.use_betweenness}, blend_attention {config.blend_attention}, ctc_weight {config.ctc_weight}"
          + (f" ({config.ctc_outputs_per_frame} per frame)" if config.ctc_weight > 0 else ""))
    if args.streaming and args.join_probability > 0:
        print("--streaming: words are not joined (the speakers' word pools need the whole training split)")
    print(f"augmentations: {', '.join(a + (' %g-%g' % args.vtlp_range if a == 'vtlp' else '') for a in augmentations) or 'none'}"
          + (f" (rows of {', '.join(augment_sources)})" if augmentations and augment_sources else "")
          + f"; words joined from {len(pools)} speakers "
          f"(probability {args.join_probability}); non-speech share {args.non_speech}; "
          f"at most {config.max_tokens_per_second} tokens per second of audio"
          + (f"; repeated each epoch: {', '.join(f'{k} x{v}' for k, v in planner.repeats.items())}" if planner and planner.repeats else ""))


def score_by_source(trainer: "ASRTrainer", split: Dataset, prefix: str, tokenizer) -> dict:
    """Decode `split` autoregressively as the saved model does (its `generation_config`'s beam width):
    the trainer's metrics as "<prefix>_<name>", and WER and CER per source."""
    prediction = trainer.predict(split, metric_key_prefix=prefix, num_beams=trainer.model.generation_config.num_beams)
    hypotheses, references, _, _ = decode_prediction(prediction, tokenizer)
    per_source = error_rates_by_source(hypotheses, references, split["source"])
    return {**prediction.metrics, **{f"{prefix}_{name}": value for name, value in per_source.items()}}


def print_results(results: dict, model, trainer: "ASRTrainer", collator: Collator, reader: ClipReader, stream_skipped: list[str],
                  args: argparse.Namespace, planner: "PlannedBatches | None", sources: dict[str, list[str]]):
    """The end of a run: learned mixes, training time, best step, non-speech, padding, skipped rows, WER per source.

    `sources` holds each scored split's source column ("validation", then "test" when it was read).
    """
    print(f"learned mixes: {model.learned_mixes()}; training time {results['train_seconds']:.0f} s; "
          f"best validation WER at step {results['best_step']} (the model saved and tested)")
    print(f"non-speech: {results['false_words_per_minute_all']:.2f} false words per minute over {len(NON_SPEECH_KINDS)} kinds")
    batched = collator.frames["padded"] / max(1, collator.frames.total())
    batching = "grouped by length" if args.group_by_length else f"{args.sorted_batches} sorted together" if planner else "streamed"
    print(f"padding: {100 * results['padding_fraction']:.1f}% of the mel frames the model processed in training "
          f"({100 * batched:.1f}% of the collated batches, {batching}; {trainer.micro_batches if trainer.splits_batches() else 1} micro-batches each)")
    if reader.skipped or stream_skipped:
        bad = [*stream_skipped, *reader.skipped.values()]
        print(f"{len(bad)} training rows were bad when their batch was built and were skipped:\n" + "\n".join(bad))
    for split, column in sources.items():
        for source, count in sorted(Counter(s for s in column if s).items()):
            print(f"{split} {source}: WER {100 * results[f'{split}_wer_{source}']:.2f}% "
                  f"(CER {100 * results[f'{split}_cer_{source}']:.2f}%) on {count} clips")
        print(f"{split} WER {100 * results[f'{split}_wer']:.2f}% (CER {100 * results[f'{split}_cer']:.2f}%) on {len(column)} clips")


def prepare_splits(args: argparse.Namespace, splits: dict, tokenizer, config: BRoPEASRConfig,
                   augmentations: tuple, skip_bad: bool) -> tuple[dict, list[str], int]:
    """Check and tokenize every split (`prepare_split`; a streamed training split as it is read), mark
    which rows the collator varies, and set the config's duration bound from the fastest training speech.

    Returns:
        (prepared splits by name, the bad rows a stream skipped, the longest label sequence).
    """
    prepared = {key: prepare_split(split, key, tokenizer, config, skip_bad, decode=key != "train")
                for key, split in splits.items() if not isinstance(split, IterableDataset)}
    stream_skipped = []
    if args.streaming:
        prepared["train"], stream_skipped = stream_split(splits["train"], tokenizer, config, skip_bad, args.seed, args.shuffle_buffer)
    max_label = max(len(labels) for key, split in prepared.items() if key != "train" or not args.streaming for labels in split["labels"])
    # The fastest speech in training (a stream: in validation), with a 1.5x margin for faster speakers,
    # bounds every transcript's length by its clip's duration in generate: non-speech or a confused
    # decode cannot run away.
    timed = prepared["validation" if args.streaming else "train"]
    rates = [(len(labels) - 1) / seconds for labels, seconds in zip(timed["labels"], timed["seconds"])]
    config.max_tokens_per_second = float(math.ceil(1.5 * max(rates)))
    varied = bool(augmentations) or args.join_probability > 0 or args.non_speech > 0
    for key, split in prepared.items():
        if key == "train" and args.streaming:
            prepared[key] = split.map(lambda row: {"augment": varied})
        else:
            prepared[key] = split.add_column("augment", [varied and key == "train"] * len(split))
    return prepared, stream_skipped, max_label


def plan_batches(args: argparse.Namespace, train: Dataset | IterableDataset, pools: dict, tokenizer) -> "PlannedBatches | None":
    """The training batches, planned by length (`PlannedBatches`); None for a stream, which has no
    length to plan, and with --group-by-length, which brings transformers' own sampler."""
    if args.streaming or args.group_by_length:
        return None
    rows = train.select_columns(["source", "speaker", "text", "labels", "seconds"]).to_list()
    repeats = DEFAULT_SOURCE_REPEATS if args.source_repeats is None else args.source_repeats
    sources = {row["source"] for row in rows}
    if args.source_repeats is not None:  # the default applies to the sources a corpus has
        require_sources("--source-repeats", repeats, sources)
    return PlannedBatches(rows, pools, tokenizer, args.join_probability, args.non_speech, args.batch_size, args.sorted_batches,
                          args.seed, {source: n for source, n in repeats.items() if source in sources})


def main(argv=None) -> dict:
    """Train, save, and test; returns the best model's validation and test metrics (per source too; no test ones without a test split) and "train_seconds"."""
    args = parse_args(argv)
    check_args(args)
    args.max_steps = args.max_steps or DEFAULT_MAX_STEPS
    splits = load_splits(args)
    tokenizer = make_tokenizer(args, splits["train"])
    config = make_config(args, tokenizer)
    if args.num_beams is None:
        args.num_beams = RESCORING_BEAMS if config.rescores_with_ctc else 1
    augmentations, augment_sources = augmentation_plan(args, splits["train"])
    skip_bad = args.on_bad_audio == "skip"
    prepared, stream_skipped, max_label = prepare_splits(args, splits, tokenizer, config, augmentations, skip_bad)
    pools = word_pools(prepared["train"]) if args.join_probability > 0 and not args.streaming else {}
    reader = ClipReader(0 if args.streaming else args.audio_cache_mb, skip_bad)
    collator = Collator(
        config, tokenizer, augmentations, pools, args.join_probability, args.non_speech, args.augment_probability,
        reader=reader, augment_sources=augment_sources, vtlp_range=args.vtlp_range,
    )
    planner = plan_batches(args, prepared["train"], pools, tokenizer)

    torch.manual_seed(args.seed)  # the model is built before Trainer seeds
    model = BRoPEASRForConditionalGeneration(config)
    model.generation_config.num_beams = args.num_beams  # saved with the model: transcribe and the pipeline decode as the final scores did
    table, tracker = MetricsTable(), MixTracker(every=min(50, args.eval_steps))
    trainer = ASRTrainer(
        model=model,
        args=training_arguments(args, max_label),
        train_dataset=PlannedSplit(prepared["train"]) if planner else prepared["train"],
        eval_dataset=prepared["validation"],
        data_collator=collator,
        processing_class=BRoPEASRProcessor(BRoPEASRFeatureExtractor.from_model_config(config), tokenizer),
        compute_metrics=metrics_function(tokenizer),
        callbacks=[table, tracker] if mix_parameters(model) else [table],
        mix_learning_rate_scale=args.mix_learning_rate_scale,
        train_sampler=planner,
        micro_batches=args.micro_batches,
        ema_decay=args.ema_decay,
    )
    if trainer.is_world_process_zero():
        print_setup(model, config, tokenizer, prepared, args, augmentations, augment_sources, pools, planner)
    started = time.time()
    trainer.train(resume_from_checkpoint=args.resume or None)
    elapsed = time.time() - started
    trainer.save_model(args.output_dir)  # model (safetensors), processor (feature extractor and tokenizer), brope_asr.py
    results = {"train_seconds": elapsed, "best_step": trainer.state.best_global_step, "skipped_at_batch_time": len(reader.skipped) + len(stream_skipped),
               "padding_fraction": trainer.frames["padded"] / max(1, trainer.frames.total())}
    sources = {}  # the best model's WER per source: validation's (what chose it), then the test split's
    for split in ("validation", "test"):
        if split in prepared:
            results.update(score_by_source(trainer, prepared[split], split, tokenizer))
            sources[split] = prepared[split]["source"]
    if trainer.is_world_process_zero():
        model.eval()
        results.update({f"false_words_per_minute_{kind}": rate for kind, rate in false_words_per_minute(model, tokenizer).items()})
        table.save(Path(args.output_dir))
        tracker.save(Path(args.output_dir))
        print_results(results, model, trainer, collator, reader, stream_skipped, args, planner, sources)
    return results


def run_as_script(argv=None) -> None:
    """`main` as the command line runs it: a bad flag or input ends the process with its message, not a traceback.

    The process keeps freed memory for reuse (`keep_freed_memory`, glibc only): a training step frees and allocates
    the same large tensors every time, and glibc's default faults them in again page by page (README, Performance).

    A process launched by torchrun or accelerate ends with os._exit(0) once everything is saved and printed. Letting the
    interpreter finalize frees tensors that gloo's threads still hold and aborts about 1 run in 36 on CPU ("terminate
    called without an active exception", pytorch/pytorch#190489); destroy_process_group() first now and then hangs
    instead (#75097). README, Several GPUs or processes.
    """
    keep_freed_memory()
    try:
        main(argv)
    except (ValueError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
    if torch.distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    run_as_script()
