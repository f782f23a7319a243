"""Train and evaluate a brope-asr recognizer with Hugging Face's Seq2SeqTrainer.

With no arguments it trains the small preset on the spoken-digits corpus shipped in data/ and
reports WER from autoregressive decoding (never from teacher-forced argmax) on the validation
split during training and on the test split (held-out voices) at the end:

    python train_hf.py                                   # CPU, about 9 minutes on 2 cores
    python train_hf.py --input-mode both --betweenness --blend-attention --ctc-weight 0.3
    torchrun --nproc_per_node 2 train_hf.py --max-steps 400
    python train_hf.py --dataset openslr/librispeech_asr --dataset-config clean \\
        --train-split train.100 --eval-split validation --test-split test --preset seed

The run directory (--output-dir) ends up holding the model and tokenizer (`from_pretrained`
works on it), checkpoints, metrics.csv, and curves.png when matplotlib is installed.
"""

import argparse
import csv
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from datasets import Audio, Dataset, load_dataset
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)

from brope_asr import (
    HOP_LENGTH,
    SAMPLE_RATE,
    BRoPEASRConfig,
    BRoPEASRForConditionalGeneration,
    batch_inputs,
    char_error_rate,
    load_audio,
    resample,
    token_scores,
    word_error_rate,
)

DATA_DIR = Path(__file__).resolve().parent / "data"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3, matching BRoPEASRConfig's defaults
SPEEDS = (0.9, 1.0, 1.1)  # speed perturbation factors, as Kaldi's 3-way recipe


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


def audio_source(value) -> tuple:
    """An undecoded `datasets` audio value (path string or {"bytes", "path"}) -> (what soundfile reads, file name)."""
    if isinstance(value, dict):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
        return source, value.get("path") or "embedded bytes"
    return value, value


def load_splits(args) -> dict[str, Dataset]:
    """The train / validation / test splits as datasets with columns "audio" (undecoded) and "text"."""
    names = {"train": args.train_split, "validation": args.eval_split, "test": args.test_split}
    names = {key: name for key, name in names.items() if name}
    if args.dataset:
        splits = {key: load_dataset(args.dataset, args.dataset_config, split=name) for key, name in names.items()}
        audio_column, text_column = args.audio_column, args.text_column
    else:
        folder = Path(args.data_dir)
        table = load_dataset("csv", data_files=str(folder / "metadata.csv"), split="train")
        if "split" not in table.column_names:
            raise ValueError(f"{folder / 'metadata.csv'} has no column 'split'; its columns are {table.column_names}")
        table = table.map(lambda row: {"file_name": str(folder / row["file_name"])})
        splits = {key: table.filter(lambda row, name=name: row["split"] == name) for key, name in names.items()}
        audio_column, text_column = "file_name", "transcription"
    for key, split in splits.items():
        for column in (audio_column, text_column):
            if column not in split.column_names:
                raise ValueError(f"{key} split has no column {column!r}; its columns are {split.column_names}")
        if isinstance(split.features[audio_column], Audio):
            split = split.cast_column(audio_column, Audio(decode=False))  # decoded with soundfile below
        splits[key] = split.select_columns([audio_column, text_column]).rename_columns(
            {audio_column: "audio", text_column: "text"}
        )
    for key in ("train", "validation"):
        if key not in splits or len(splits[key]) == 0:
            raise ValueError(f"the {key} split ({names.get(key)!r}) is missing or empty")
    return {key: split for key, split in splits.items() if len(split)}


def prepare_split(split: Dataset, key: str, tokenizer, config: BRoPEASRConfig, skip_bad: bool) -> Dataset:
    """Decode and resample audio, tokenize transcripts (ending with eos), and drop or report bad rows.

    A row is bad if its audio cannot be read or used, is longer than `max_source_positions`, or
    its transcript is longer than `max_target_positions`. With `skip_bad` bad rows are dropped with a
    warning and a count; otherwise the run stops listing every bad row.
    """

    def prepare(row, index):
        source, file_name = audio_source(row["audio"])
        name = f"{key} row {index} ({file_name})"
        try:
            audio = load_audio(source, name=name).numpy()
            if len(audio) // HOP_LENGTH > config.max_source_positions:
                raise ValueError(
                    f"{name}: {len(audio) / SAMPLE_RATE:.1f} s is longer than max_source_positions="
                    f"{config.max_source_positions} frames"
                )
            text = normalize_text(row["text"])
            labels = tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            if len(labels) > config.max_target_positions:
                raise ValueError(f"{name}: transcript of {len(labels)} tokens exceeds max_target_positions")
        except ValueError as error:
            return {"waveform": np.zeros(0, np.float32), "text": "", "labels": [], "error": str(error)}
        return {"waveform": audio, "text": text, "labels": labels, "error": ""}

    prepared = split.map(prepare, with_indices=True, remove_columns=split.column_names, desc=f"decoding {key}")
    errors = [e for e in prepared["error"] if e]
    if errors and not skip_bad:
        raise ValueError(f"{len(errors)} bad rows in the {key} split:\n" + "\n".join(errors))
    if errors:
        warnings.warn(f"skipped {len(errors)} bad rows of {len(prepared)} in the {key} split:\n" + "\n".join(errors))
        prepared = prepared.filter(lambda row: not row["error"])
    # Counted on the token ids, so it holds for any tokenizer, not only the character one.
    unknown = sum(labels.count(tokenizer.unk_token_id) for labels in prepared["labels"]) if tokenizer.unk_token else 0
    if unknown:
        warnings.warn(f"{unknown} characters in the {key} split are not in the tokenizer and map to {tokenizer.unk_token}")
    return prepared.remove_columns("error").with_format("numpy", columns=["waveform"], output_all_columns=True)


class Collator:
    """Pads a batch to its longest clip, builds the model inputs, and augments rows marked `augment`.

    Only the training split's rows carry augment=True (see `main`), so evaluation sees clean audio.
    Augmentation: random gain (+-6 dB), white noise at 20-40 dB SNR, speed
    perturbation by resampling, then SpecAugment [9]-style frequency masks on the log-mel and time
    masks on every input. Randomness comes from torch's global generator, which Trainer seeds.
    """

    def __init__(self, config: BRoPEASRConfig):
        self.config = config

    def perturb(self, clip: torch.Tensor) -> torch.Tensor:
        """(N,) -> (N',) waveform with random speed, gain and noise."""
        speed = SPEEDS[int(torch.randint(len(SPEEDS), ()))]
        if len(clip) / speed > self.config.max_source_positions * HOP_LENGTH:
            speed = 1.0  # slowing down would push the clip past what the model accepts
        clip = resample(clip, round(SAMPLE_RATE * speed), SAMPLE_RATE)  # played back `speed` times faster
        clip = clip * 10 ** (torch.empty(()).uniform_(-6, 6) / 20)
        snr_db = torch.empty(()).uniform_(20, 40)
        return clip + torch.randn_like(clip) * clip.std() * 10 ** (-snr_db / 20)

    def mask(self, inputs: dict[str, torch.Tensor]):
        """SpecAugment: two frequency masks of up to 10 mel bins, time masks of up to 5% of each clip."""
        lengths = inputs["attention_mask"].sum(1)
        frames = torch.arange(inputs["attention_mask"].shape[1])
        for row, length in enumerate(lengths.tolist()):
            width = max(1, length // 20)
            for _ in range(2):
                start = int(torch.randint(max(1, length - width), ()))
                drop = (frames >= start) & (frames < start + int(torch.randint(width + 1, ())))
                if "input_features" in inputs:
                    inputs["input_features"][row, :, drop] = 0.0
                if "waveform" in inputs:
                    inputs["waveform"][row].view(-1, HOP_LENGTH)[drop] = 0.0
            if "input_features" in inputs:
                for _ in range(2):
                    start = int(torch.randint(self.config.num_mel_bins - 10, ()))
                    inputs["input_features"][row, start : start + int(torch.randint(11, ())), :length] = 0.0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        augment = bool(rows[0]["augment"])
        clips = [torch.tensor(row["waveform"]) for row in rows]  # a copy: the collator writes into it
        if augment:
            clips = [self.perturb(clip) for clip in clips]
        inputs = batch_inputs(clips, self.config)
        if augment:
            self.mask(inputs)
        labels = [torch.as_tensor(row["labels"]) for row in rows]
        inputs["labels"] = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=-100)
        return inputs


# ------------------------------------------------------------------------------------------- training


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the run stops before saving a broken model."""


class ASRTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that stops on a non-finite loss, naming the step, instead of training on."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if model.training and not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1}; stopping without saving "
                "(lower --learning-rate or check the data)"
            )
        return result


def metrics_function(tokenizer):
    """compute_metrics for Seq2SeqTrainer: WER and CER of the generated transcripts, and token scores.

    Token scores compare the generated ids with the labels position by position (the decoder
    start token dropped), so a missing or extra character shifts and costs the rest of the line.
    """

    def compute(prediction):
        generated, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        generated = np.where(generated < 0, tokenizer.pad_token_id, generated)[:, 1:]
        width = labels.shape[1]
        aligned = np.full_like(labels, tokenizer.pad_token_id)
        aligned[:, : min(width, generated.shape[1])] = generated[:, :width]
        hypotheses = tokenizer.batch_decode(generated, skip_special_tokens=True)
        references = tokenizer.batch_decode(np.where(labels < 0, tokenizer.pad_token_id, labels), skip_special_tokens=True)
        return {
            "wer": word_error_rate(hypotheses, references),
            "cer": char_error_rate(hypotheses, references),
            **token_scores(aligned, labels),
        }

    return compute


class MetricsTable(TrainerCallback):
    """Prints one table row per evaluation (the original's columns plus CER) and keeps the history."""

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
        with open(path / "metrics.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
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


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; `argv` None reads sys.argv."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--preset", choices=("small", "seed"), default="small", help="model size")
    model.add_argument("--input-mode", choices=("spectrogram", "waveform", "both"), default="spectrogram")
    model.add_argument("--betweenness", action=argparse.BooleanOptionalAction, default=False, help="bRoPE position shifts")
    model.add_argument("--blend-attention", action=argparse.BooleanOptionalAction, default=False, help="dot/cosine blend")
    model.add_argument("--ctc-weight", type=float, default=0.0, help="weight of the auxiliary CTC loss (0 = off)")
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default=str(DATA_DIR), help="folder with metadata.csv (file_name,transcription,split)")
    data.add_argument("--dataset", help="a Hugging Face hub dataset instead of --data-dir (needs the network)")
    data.add_argument("--dataset-config", help="the hub dataset's configuration name")
    data.add_argument("--train-split", default="train")
    data.add_argument("--eval-split", default="validation")
    data.add_argument("--test-split", default="test", help="empty to skip the final test")
    data.add_argument("--text-column", default="text")
    data.add_argument("--audio-column", default="audio")
    data.add_argument("--tokenizer", help="a saved Hugging Face tokenizer instead of building a character one")
    data.add_argument("--on-bad-audio", choices=("skip", "error"), default="skip", help="skip bad rows with a warning, or stop listing them")
    data.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="gain/noise/speed + SpecAugment")
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", default="runs/small")
    train.add_argument("--max-steps", type=int, default=2500)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--warmup-steps", type=int, default=100)
    train.add_argument("--eval-steps", type=int, default=500, help="evaluate (and checkpoint) every this many steps")
    train.add_argument("--num-beams", type=int, default=1, help="beam width for evaluation decoding")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    train.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Train, save, and test; returns the test metrics (none without a test split) and "train_seconds"."""
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    splits = load_splits(args)
    if args.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        if None in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id):
            raise ValueError(f"tokenizer {args.tokenizer} needs pad, bos and eos tokens")
    else:
        tokenizer = build_tokenizer([normalize_text(text) for text in splits["train"]["text"]])
    config = BRoPEASRConfig.from_preset(
        args.preset,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
        input_mode=args.input_mode,
        use_betweenness=args.betweenness,
        blend_attention=args.blend_attention,
        ctc_weight=args.ctc_weight,
    )
    skip_bad = args.on_bad_audio == "skip"
    prepared = {key: prepare_split(split, key, tokenizer, config, skip_bad) for key, split in splits.items()}
    max_label = max(len(labels) for split in prepared.values() for labels in split["labels"])
    for key, split in prepared.items():
        prepared[key] = split.add_column("augment", [args.augment and key == "train"] * len(split))

    training_args = Seq2SeqTrainingArguments(
        output_dir=str(output_dir),
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup_steps,
        weight_decay=0.01,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.eval_steps,
        save_total_limit=2,
        logging_steps=min(50, args.eval_steps),
        predict_with_generate=True,
        generation_max_length=max_label + 1,  # start token + the longest transcript: no runaway decoding
        generation_num_beams=args.num_beams,
        remove_unused_columns=False,  # keep "waveform" for the collator
        label_names=["labels"],
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        bf16=args.bf16,
        ddp_find_unused_parameters=False,  # every built parameter is used (unused branches are not built)
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # also what makes torchrun on CPU run DDP (gloo) rather than N copies
    )
    torch.manual_seed(args.seed)  # the model is built before Trainer seeds
    model = BRoPEASRForConditionalGeneration(config)
    table = MetricsTable()
    trainer = ASRTrainer(
        model=model,
        args=training_args,
        train_dataset=prepared["train"],
        eval_dataset=prepared["validation"],
        data_collator=Collator(config),
        processing_class=tokenizer,
        compute_metrics=metrics_function(tokenizer),
        callbacks=[table],
    )
    if trainer.is_world_process_zero():
        model.initialization_report()
        counts = ", ".join(f"{key} {len(split)}" for key, split in prepared.items())
        print(f"clips: {counts}; vocabulary {len(tokenizer)}; input_mode {config.input_mode}, "
              f"betweenness {config.use_betweenness}, blend_attention {config.blend_attention}, ctc_weight {config.ctc_weight}")
    started = time.time()
    trainer.train(resume_from_checkpoint=args.resume or None)
    elapsed = time.time() - started
    trainer.save_model(str(output_dir))  # model (safetensors) and tokenizer
    results = {"train_seconds": elapsed}
    if "test" in prepared:
        results.update(trainer.predict(prepared["test"], metric_key_prefix="test").metrics)
    if trainer.is_world_process_zero():
        table.save(output_dir)
        print(f"learned blends: {model.learned_blends()}; training time {elapsed:.0f} s")
        if "test_wer" in results:
            print(f"test WER {100 * results['test_wer']:.2f}% (CER {100 * results['test_cer']:.2f}%) on {len(prepared['test'])} clips")
    return results


if __name__ == "__main__":
    try:
        main()
    except (ValueError, NonFiniteLossError) as error:
        sys.exit(f"error: {error}")
