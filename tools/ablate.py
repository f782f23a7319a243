"""Ablation grid for brope-asr: input mode x betweenness x blended attention, several seeds per cell.

Every cell of input_mode {spectrogram, waveform, both} x betweenness {off, on} x blended attention
{off, on} is trained by `train_hf.main` on the embedded spoken-digits corpus with seeds 0..N-1, every
run with the same number of steps, and tested on the held-out voices. One table reports, per cell,
the mean +- sample standard deviation over seeds of test WER and CER and of the final validation
loss, the parameter count, the training time (trainer.train alone) and the wall time of a whole run,
and the learned blend values at the end:

    python -m tools.ablate                         # 12 cells x 3 seeds x 300 steps, 50 min on 2 CPU cores
    python -m tools.ablate --quick                 # 12 cells x 1 seed x 30 steps, a look in about 2 minutes
    python -m tools.ablate --threads 1             # one torch thread per run: much faster on shared cores
    python -m tools.ablate --modes spectrogram --betweenness off on --blend off --seeds 5
    python -m tools.ablate -- --ctc-weight 0       # options after -- go to every train_hf.py run (here: no CTC)

Layout: <output-dir>/<cell>/seed<k>/ is a train_hf run directory (model, tokenizer, metrics.csv)
plus result.json. A run whose result.json exists is not trained again, so a stopped grid resumes
where it stopped; a run that crashed leaves error.txt instead, the grid goes on, and the next
invocation retries it. <output-dir>/ablation.md (the table, a comparison of every cell with the
first one, and each switch's effect from paired runs), ablation.csv, and ablation_wer.png when
matplotlib is installed summarize the grid.

Budget, measured: the default grid ran in 50.5 min on this project's 2 idle cores with torch's
default 2 threads, a run taking 69 s (spectrogram, off, off) to 103 s (both, on, on) of which
2-3 s are outside trainer.train (corpus from the datasets cache, model, test decoding, saving).
300 steps thus leaves headroom under a 90-minute budget for a slower 2-core machine. On cores
that other jobs also use, torch's default of one thread per core made steps up to ten times
slower than --threads 1.
"""

import argparse
import csv
import json
import math
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

import train_hf
from brope_asr import SAMPLE_RATE, BRoPEASRFeatureExtractor, BRoPEASRForConditionalGeneration, load_audio, word_error_rate

MODES = ("spectrogram", "waveform", "both")
SWITCHES = {"off": False, "on": True}
DEFAULT_STEPS = 300  # 12 cells x 3 seeds in 50.5 min on 2 CPU cores (measurement in the module docstring)
QUICK_STEPS = 30  # exercises every cell and fills the table; WER is still above 100% this early
LEARNED_MIXES = ("input_blend", "attention_blend", "betweenness_gate")  # keys of model.learned_mixes()
LONG_BUCKETS = ((8, 10), (11, 14), (15, 20))  # digits per string of the --long set, reported apart
# train_hf options that define a cell and its budget: set by this script, never passed through after --
MANAGED = ("--output-dir", "--input-mode", "--betweenness", "--no-betweenness", "--blend-attention",
           "--no-blend-attention", "--seed", "--max-steps", "--eval-steps", "--resume")


@dataclass(frozen=True)
class Cell:
    """One configuration of the grid."""

    input_mode: str
    betweenness: bool
    blend_attention: bool

    @property
    def name(self) -> str:
        """Directory and table name, e.g. "spectrogram_betweenness-off_blend-on"."""
        on = {False: "off", True: "on"}
        return f"{self.input_mode}_betweenness-{on[self.betweenness]}_blend-{on[self.blend_attention]}"

    def flags(self) -> list[str]:
        """The train_hf.py options that select this cell."""
        return [
            "--input-mode", self.input_mode,
            "--betweenness" if self.betweenness else "--no-betweenness",
            "--blend-attention" if self.blend_attention else "--no-blend-attention",
        ]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Split argv at "--": this script's options before it, train_hf.py options after it.

    Returns: (options with seeds, max_steps and output_dir resolved for --quick, train_hf options).
    Raises ValueError when a train_hf option after -- is one this script sets itself.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Options after -- are passed to every train_hf.py run."
    )
    parser.add_argument("--output-dir", help="grid root (default runs/ablation, or runs/ablation-quick with --quick)")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 per cell (default 3, or 1 with --quick)")
    parser.add_argument("--max-steps", type=int, help=f"training steps of every run (default {DEFAULT_STEPS}, or {QUICK_STEPS} with --quick)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps and 1 seed: a look at the whole grid in minutes")
    parser.add_argument("--threads", type=int, help="torch threads for the runs (default: torch's, one per core)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="input modes to train")
    parser.add_argument("--betweenness", nargs="+", choices=SWITCHES, default=list(SWITCHES), help="bRoPE settings to train")
    parser.add_argument("--blend", nargs="+", choices=SWITCHES, default=list(SWITCHES), help="blended attention settings to train")
    parser.add_argument("--long", type=Path, metavar="DIR",
                        help="also score every run on this length-generalization set (python -m tools.make_corpus --long N --out DIR)")
    parser.add_argument("--score-long", type=Path, nargs="+", metavar="RUN_DIR",
                        help="train nothing: print the --long set's WER by length of these saved runs")
    parser.add_argument("--num-beams", type=int, metavar="N",
                        help="with --score-long: decode with this beam (1: greedy) instead of each run's saved one")
    args = parser.parse_args(own)
    args.seeds = args.seeds if args.seeds is not None else 1 if args.quick else 3
    args.max_steps = args.max_steps if args.max_steps is not None else QUICK_STEPS if args.quick else DEFAULT_STEPS
    args.output_dir = Path(args.output_dir or ("runs/ablation-quick" if args.quick else "runs/ablation"))
    for option in ("seeds", "max_steps", "threads"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    # argparse also takes a prefix of an option (--max for --max-steps), so prefixes clash too
    clashes = [
        option for option in extra
        if option.startswith("--") and any(managed.startswith(option.split("=")[0]) for managed in MANAGED)
    ]
    if clashes:
        raise ValueError(
            f"{clashes} after -- are set by tools/ablate.py; use its own --modes/--betweenness/--blend/--seeds/--max-steps/--output-dir"
        )
    return args, extra


def grid(args: argparse.Namespace) -> list[Cell]:
    """The cells selected by --modes, --betweenness and --blend, input mode varying slowest."""
    return [
        Cell(mode, SWITCHES[betweenness], SWITCHES[blend])
        for mode in dict.fromkeys(args.modes)
        for betweenness in dict.fromkeys(args.betweenness)
        for blend in dict.fromkeys(args.blend)
    ]


def run_arguments(cell: Cell, seed: int, max_steps: int, extra: list[str]) -> list[str]:
    """train_hf.py options of one run, without --output-dir (so a moved grid still resumes).

    Validation runs once, at the end (--eval-steps = --max-steps), to spend the budget on training;
    warmup is 10% of the steps. Options in `extra` come last, so they override the warmup.
    """
    return cell.flags() + [
        "--seed", str(seed),
        "--max-steps", str(max_steps),
        "--eval-steps", str(max_steps),
        "--warmup-steps", str(max_steps // 10),
    ] + extra


def long_string_wers(run_dir: Path, long_dir: Path, batch_size: int = 16, num_beams: int | None = None) -> dict[str, float]:
    """WER of a saved run on strings longer than any in training, each string decoded whole (one window).

    `long_dir` is made by `python -m tools.make_corpus --long N --out DIR` (test-split voices, 8-20
    digits; training strings have 1-7). Decoding is `generate` on the whole clip, not `transcribe`,
    which would cut a clip longer than its window at pauses and so hide what positions do at length;
    `num_beams` (1: greedy) overrides the run's saved beam.

    Returns:
        {"long_wer": over every string, "long_wer_8_10" / "long_cer_8_10": over the strings of 8-10 digits, ...}
        (LONG_BUCKETS).
    """
    model = BRoPEASRForConditionalGeneration.from_pretrained(str(run_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    features = BRoPEASRFeatureExtractor.from_model_config(model.config)
    with open(long_dir / "metadata.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    hypotheses = []
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            clips = [load_audio(long_dir / row["file_name"]) for row in rows[first : first + batch_size]]
            beams = {} if num_beams is None else {"num_beams": num_beams}
            ids = model.generate(**features(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt"), **beams)
            hypotheses += tokenizer.batch_decode(ids, skip_special_tokens=True)
    references = [row["transcription"] for row in rows]
    buckets = [next((f"{low}_{high}" for low, high in LONG_BUCKETS if low <= len(text.split()) <= high), "") for text in references]
    by_bucket = train_hf.error_rates_by_source(hypotheses, references, buckets)  # "" (outside every bucket) is left out
    return {"long_wer": word_error_rate(hypotheses, references), **{f"long_{key}": value for key, value in by_bucket.items()}}


def train(run_dir: Path, arguments: list[str], long_dir: Path | None = None) -> dict:
    """Train and test one run with train_hf.main and write its result.json.

    Returns: {"test_wer", "test_cer", "val_loss", "parameters", "train_seconds", "seconds", LEARNED_MIXES
    that are enabled..., "arguments"}, plus `long_string_wers` with `long_dir`; train_seconds is
    trainer.train alone (the steps and the final validation), seconds the wall time of the whole
    train_hf run (data, model, training, test, saving).
    """
    started = time.time()
    metrics = train_hf.main(arguments + ["--output-dir", str(run_dir)])
    seconds = time.time() - started
    with open(run_dir / "metrics.csv", newline="") as file:
        val_loss = float(list(csv.DictReader(file))[-1]["eval_loss"])
    model = BRoPEASRForConditionalGeneration.from_pretrained(str(run_dir))
    result = {
        "test_wer": metrics["test_wer"],
        "test_cer": metrics["test_cer"],
        "val_loss": val_loss,
        "parameters": model.num_parameters(),
        "train_seconds": metrics["train_seconds"],
        "seconds": seconds,
        **model.learned_mixes(),
        **(long_string_wers(run_dir, long_dir) if long_dir else {}),
        "arguments": arguments,
    }
    for checkpoint in run_dir.glob("checkpoint-*"):  # a finished run is never resumed: keep only the final model
        shutil.rmtree(checkpoint)
    partial = run_dir / "result.json.partial"  # renamed when complete: a killed write never looks finished
    partial.write_text(json.dumps(result, indent=2) + "\n")
    partial.replace(run_dir / "result.json")
    return result


def load_finished(runs: list[tuple[Path, list[str]]]) -> dict[Path, dict]:
    """The results of the runs (run directory, train_hf options) whose result.json exists, by directory.

    Raises ValueError, before anything trains, when a result.json was made with other train_hf options.
    """
    finished = {}
    for run_dir, arguments in runs:
        saved = run_dir / "result.json"
        if saved.exists():
            result = json.loads(saved.read_text())
            if result["arguments"] != arguments:
                raise ValueError(
                    f"{saved} was trained with {result['arguments']}, not {arguments}; "
                    "use another --output-dir or delete that run"
                )
            finished[run_dir] = result
    return finished


def train_or_record(run_dir: Path, arguments: list[str], long_dir: Path | None = None) -> dict | None:
    """`train`, except that a crash is written to run_dir/error.txt and returns None, so the grid goes on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").unlink(missing_ok=True)
    print(f"ablate: training {run_dir}", flush=True)
    try:
        return train(run_dir, arguments, long_dir)
    except Exception:  # any crash of one run is recorded; the other runs still train
        (run_dir / "error.txt").write_text(traceback.format_exc())
        print(f"ablate: {run_dir} failed, see {run_dir / 'error.txt'}", flush=True)
        return None


def spread(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); the deviation is nan for fewer than two values."""
    mean = statistics.fmean(values) if values else math.nan
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(cell: Cell, results: list[dict | None]) -> dict:
    """One table row: mean and std over the cell's finished runs of every reported quantity."""
    done = [result for result in results if result is not None]
    row = {
        "cell": cell.name,
        "input_mode": cell.input_mode,
        "betweenness": cell.betweenness,
        "blend_attention": cell.blend_attention,
        "runs": len(done),
        "failed": len(results) - len(done),
        "parameters": done[0]["parameters"] if done else None,
    }
    long_keys = ("long_wer",) + tuple(f"long_wer_{low}_{high}" for low, high in LONG_BUCKETS)
    for key in ("test_wer", "test_cer", "val_loss", "train_seconds", "seconds") + LEARNED_MIXES + long_keys:
        row[f"{key}_mean"], row[f"{key}_std"] = spread([result[key] for result in done if key in result])
    return row


def plus_minus(mean: float, std: float, scale: float = 1.0, digits: int = 2) -> str:
    """Format scale * (mean, std) as "m ± s", as "m" alone for one run, and as "–" for none."""
    if math.isnan(mean):
        return "–"
    if math.isnan(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown_table(rows: list[dict], seeds: int) -> str:
    """The grid as a markdown table, WER and CER in percent."""
    long = any(not math.isnan(row["long_wer_mean"]) for row in rows)
    header = ("config", "runs", "test WER (%)", "test CER (%)", "val loss", "params", "train (s)", "run (s)",
              "input blend", "attention blend", "betweenness gate") + (("8-20 digits WER (%)",) + tuple(
              f"{low}-{high} digits (%)" for low, high in LONG_BUCKETS) if long else ())
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = (
            row["cell"],
            f"{row['runs']}" if row["runs"] == seeds else f"{row['runs']} of {seeds}",
            plus_minus(row["test_wer_mean"], row["test_wer_std"], 100),
            plus_minus(row["test_cer_mean"], row["test_cer_std"], 100),
            plus_minus(row["val_loss_mean"], row["val_loss_std"], digits=3),
            f"{row['parameters']:,}" if row["parameters"] else "–",
            plus_minus(row["train_seconds_mean"], row["train_seconds_std"], digits=0),
            plus_minus(row["seconds_mean"], row["seconds_std"], digits=0),
            *(plus_minus(row[f"{key}_mean"], row[f"{key}_std"], digits=3) for key in LEARNED_MIXES),
            *((plus_minus(row["long_wer_mean"], row["long_wer_std"], 100),
               *(plus_minus(row[f"long_wer_{low}_{high}_mean"], row[f"long_wer_{low}_{high}_std"], 100) for low, high in LONG_BUCKETS))
              if long else ()),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison(rows: list[dict]) -> list[str]:
    """Each cell's mean test WER against the first cell's (the baseline in the default grid).

    A difference counts as larger than the seed-to-seed spread when it exceeds the pooled sample
    standard deviation of the two cells, sqrt((s1^2 + s2^2) / 2); with one seed there is no spread.
    """
    finished = [row for row in rows if row["runs"]]
    if len(finished) < 2:
        return []
    reference, lines = finished[0], []
    for row in finished[1:]:
        difference = 100 * (row["test_wer_mean"] - reference["test_wer_mean"])
        pooled = 100 * math.sqrt((row["test_wer_std"] ** 2 + reference["test_wer_std"] ** 2) / 2)
        if math.isnan(pooled):
            verdict = "no seed-to-seed spread to compare with (fewer than 2 seeds)"
        elif abs(difference) > pooled:
            verdict = f"larger than the seed-to-seed spread ({pooled:.2f})"
        else:
            verdict = f"within the seed-to-seed spread ({pooled:.2f})"
        lines.append(f"- {row['cell']} vs {reference['cell']}: WER {difference:+.2f} points, {verdict}")
    return lines


# Two-sided 95% critical values of Student's t for 1..30 degrees of freedom; more degrees use the
# value at 30 (conservative: the exact value falls from 2.042 towards 1.960).
T_CRITICAL_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
                 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
                 2.052, 2.048, 2.045, 2.042)


def t_critical(degrees: int) -> float:
    """Two-sided 95% critical value of Student's t (the value at 30 degrees beyond 30: conservative)."""
    return T_CRITICAL_95[min(degrees, len(T_CRITICAL_95)) - 1]


def paired_bound(differences: list[float]) -> tuple[float, float, float, float]:
    """(mean, sample std, standard error, 95% bound) of two or more paired differences: the bound of a
    two-sided paired t-test, t(0.975, n - 1) standard errors; the mean differs from 0 when beyond it."""
    mean, std = spread(differences)
    error = std / math.sqrt(len(differences))
    return mean, std, error, t_critical(len(differences) - 1) * error


def pairs_needed(std: float, difference: float, power_z: float = 0.8416) -> int:
    """Pairs a paired t-test needs to find a true `difference` at 95% confidence with 80% power,
    given the paired differences' standard deviation `std`: the least n with
    (t(0.975, n - 1) + z(power)) std / sqrt(n) <= difference (z(0.8) = 0.8416, the normal
    approximation for the power term)."""
    n = 2
    while (t_critical(n - 1) + power_z) * std / math.sqrt(n) > difference:
        n += 1
    return n


CONTRASTS = (  # (label, the field of Cell that changes, its value in the second run, in the first)
    ("betweenness on - off", "betweenness", True, False),
    ("blended attention on - off", "blend_attention", True, False),
    ("waveform - spectrogram input", "input_mode", "waveform", "spectrogram"),
    ("both - spectrogram input", "input_mode", "both", "spectrogram"),
)


def effects(results: dict[Cell, list[dict | None]], key: str = "test_wer") -> list[str]:
    """Each switch's effect on test WER (or another rate, `key`) over the whole grid, from runs paired on everything else.

    A run with the switch changed is paired with the finished run of the same seed whose cell differs
    only in that switch; the effect is the mean of the pairs' WER differences, and its standard error
    is the sample std of the differences / sqrt(pairs). An effect is called larger than the
    seed-to-seed spread when it is outside the 95% bound of a paired t-test, t(0.975, pairs - 1)
    standard errors (2.78 of them for 5 pairs, 2.11 for 18): with few pairs, "two standard errors"
    would call noise an effect far more often than 5% of the time. The differences' spread holds the
    seed-to-seed noise plus any change of the effect across the other switches, so the test is, if
    anything, conservative about calling an effect.

    Args:
        results: per cell, one result (or None for a failed run) per seed, seeds in the same order.
    Returns:
        One line per contrast with at least one pair in the grid.
    """
    lines = []
    for label, field, changed, reference in CONTRASTS:
        differences = []
        for cell, runs in results.items():
            if getattr(cell, field) != changed:
                continue
            base = replace(cell, **{field: reference})
            for run, base_run in zip(runs, results.get(base, [])):
                if run is not None and base_run is not None and key in run and key in base_run:
                    differences.append(100 * (run[key] - base_run[key]))
        if not differences:
            continue
        if len(differences) < 2:
            lines.append(f"- {label}: WER {differences[0]:+.2f} points from one pair: no spread to compare with")
            continue
        mean, std, error, bound = paired_bound(differences)
        verdict = "larger than the seed-to-seed spread" if abs(mean) > bound else "within the seed-to-seed spread"
        lines.append(f"- {label}: WER {mean:+.2f} points over {len(differences)} paired runs "
                     f"(standard error {error:.2f}, 95% bound ±{bound:.2f}): {verdict}; "
                     f"a 2-point effect needs {pairs_needed(std, 2.0)} pairs to be told from noise at 95% with 80% power")
    return lines


def write_csv(rows: list[dict], path: Path):
    """The summary rows as CSV, one line per cell, rates as fractions."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_wer(rows: list[dict], path: Path) -> bool:
    """A bar chart of mean test WER per cell with std error bars; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    finished = [row for row in rows if row["runs"]]
    figure, axes = plt.subplots(figsize=(8, 0.4 * len(finished) + 1.2))
    errors = [0.0 if math.isnan(row["test_wer_std"]) else 100 * row["test_wer_std"] for row in finished]
    axes.barh([row["cell"] for row in finished], [100 * row["test_wer_mean"] for row in finished], xerr=errors, capsize=3)
    axes.invert_yaxis()  # first cell on top, as in the table
    axes.set(xlabel="test WER (%), mean ± std over seeds", title="brope-asr ablation")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def main(argv: list[str] | None = None) -> list[dict]:
    """Train every missing run of the grid, then write and print the table.

    Returns: the summary rows (one dict per cell, as in ablation.csv).
    """
    args, extra = parse_args(argv)
    if args.score_long:
        if not args.long:
            raise ValueError("--score-long needs --long DIR, the set to score")
        rows = []
        for run_dir in args.score_long:
            scores = long_string_wers(run_dir, args.long, num_beams=args.num_beams)
            rows.append({"run": str(run_dir), **scores})
            print(f"{run_dir}: " + ", ".join(f"{key} {100 * value:.2f}%" for key, value in scores.items()), flush=True)
        return rows
    plan = {
        cell: [
            (args.output_dir / cell.name / f"seed{seed}", run_arguments(cell, seed, args.max_steps, extra))
            for seed in range(args.seeds)
        ]
        for cell in grid(args)
    }
    options = train_hf.parse_args(next(iter(plan.values()))[0][1])  # a bad train_hf option fails here, not in every run
    if not options.test_split:
        raise ValueError("the ablation reports test WER and CER: --test-split must name a split, got an empty one")
    finished = load_finished([run for runs in plan.values() for run in runs])
    print(f"ablate: {len(plan) * args.seeds} runs, {len(finished)} already finished", flush=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    results, failures = {}, []
    for cell, runs in plan.items():
        results[cell] = []
        for run_dir, arguments in runs:
            results[cell].append(finished[run_dir] if run_dir in finished else train_or_record(run_dir, arguments, args.long))
            if results[cell][-1] is None:
                failures.append(run_dir)
    rows = [summarize(cell, cell_results) for cell, cell_results in results.items()]
    budget = f"{args.max_steps} steps per run, seeds 0..{args.seeds - 1}"
    budget += f", train_hf options {' '.join(extra)}" if extra else ""
    lines = [
        markdown_table(rows, args.seeds),
        "",
        f"{budget}. Mean ± sample std over seeds; train is trainer.train (steps and validation), run the wall time of a whole run (data, training, test, saving).",
    ]
    notes = comparison(rows)
    if notes:
        lines += ["", "Test WER against the first row:", *notes]
    paired = effects(results)
    if paired:
        lines += ["", "Each switch over the grid, runs paired on seed and the other switches:", *paired]
    paired_long = effects(results, "long_wer")
    if paired_long:
        lines += ["", "The same on the 8-20-digit strings (--long):", *paired_long]
    report = "\n".join(lines) + "\n"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "ablation.md").write_text(report)
    write_csv(rows, args.output_dir / "ablation.csv")
    plotted = plot_wer(rows, args.output_dir / "ablation_wer.png") if any(row["runs"] for row in rows) else False
    print("\n" + report)
    print(f"wrote {args.output_dir / 'ablation.md'}, ablation.csv" + (", ablation_wer.png" if plotted else ""))
    if failures:
        print(f"{len(failures)} runs failed (each has an error.txt; rerun to retry):\n" + "\n".join(map(str, failures)))
    return rows


if __name__ == "__main__":
    try:
        rows = main()
    except ValueError as error:
        sys.exit(f"error: {error}")
    sys.exit(1 if any(row.get("failed") for row in rows) else 0)
