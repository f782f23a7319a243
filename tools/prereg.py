"""The pre-registered confirmatory tests of bRoPE, of blended attention and of the two together (README, "A confirmatory test of ...").

`tools/prereg.sh` trains the registered pairs (seeds 10-15, the default recipe without and with
`--betweenness`, with `--blend-attention`, or with both: the tests share the plain runs) and keeps one log
per run in `runs/prereg/logs/`; this script reads those logs once, after the last run, and prints
the registered analysis as markdown:

    bash tools/prereg.sh                # bRoPE's runs (12-16 min each on 2 idle cores on 2026-12-02), resumable
    bash tools/prereg.sh blend          # blended attention's
    bash tools/prereg.sh brope_blend    # the two together
    python -m tools.prereg              # the analysis of whatever pairs have finished (--treatment blend|brope_blend: the others)

Primary endpoint: overall test WER, treatment - plain RoPE per seed; a two-sided paired t-test at 95%
(bound t(0.975, n - 1) standard errors of the mean difference). Secondary, reported and not tested:
WER per test source, best validation WER, training time, the learned mix at the end, and the 8-20-digit
strings by length bucket (from `long_<run>.log`, written by `python -m tools.ablate --score-long`
right after each run trains).
"""

import argparse
import ast
import re
import statistics
from pathlib import Path

from tools.ablate import paired_bound, t_critical

TREATMENTS = {"brope": "bRoPE", "blend": "blended attention", "brope_blend": "bRoPE with blended attention"}  # a treatment arm's run-name prefix: its name in the report
SHORT = {"brope": "bRoPE", "blend": "blended", "brope_blend": "combined"}  # its name in a table's heading
# The by-seed table's columns (README's layout): key, heading; long-string columns, then the learned mixes.
BY_SEED = [("test", "test WER, RoPE / {arm}"), ("test espeak-ng", "espeak-ng"), ("test fsdd", "lucas"),
           ("best validation", "best validation"), ("long_wer", "8–20 digits"), ("long_wer_8_10", "8–10"),
           ("long_wer_11_14", "11–14"), ("long_wer_15_20", "15–20")]
MIX_HEADINGS = {"betweenness_gate": "gate", "attention_blend": "cosine share", "input_blend": "spectrogram share"}
MIXES = ("betweenness_gate", "attention_blend", "input_blend")  # learned values: shown, not differenced
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
EVAL_ROW = re.compile(rf"^\s*(\d+)((?:\s*\|\s*(?:{NUMBER}|nan))+)\s*$")  # a MetricsTable row: step | train_loss | eval_loss | wer | ...
WER_COLUMN = 3
ESCAPED = re.compile(r"^.*\x1b\[[0-9;]*[A-Za-z]")  # everything up to the last terminal escape of a line


def read_log(path: Path) -> dict[str, float] | None:
    """One run's numbers from its train_hf log, in percent and seconds; None while the run has not finished.

    Keys: "test" (overall test WER), "test <source>" (per source), "best validation" (the lowest
    validation WER of the evaluation table, the one the saved model had), "training time" (seconds of
    trainer.train), "wall" (seconds of the whole run), and each learned mix by its name.
    """
    # Progress bars end their lines with \r, and a line after one may start with the bar and its cursor-up escape.
    text = "\n".join(ESCAPED.sub("", line) for line in path.read_text(errors="replace").splitlines())
    overall = re.search(rf"test WER ({NUMBER})%", text, re.M)
    if overall is None:
        return None
    run = {"test": float(overall.group(1))}
    for source, wer in re.findall(rf"test (\S+): WER ({NUMBER})%", text, re.M):
        run[f"test {source}"] = float(wer)
    validation = [float(m.group(2).split("|")[WER_COLUMN].strip()) for m in map(EVAL_ROW.match, text.splitlines()) if m]
    if validation:
        run["best validation"] = 100 * min(validation)
    mixes = re.search(rf"^learned mixes: (\{{.*?\}}); training time ({NUMBER}) s", text, re.M)
    if mixes:
        run.update(ast.literal_eval(mixes.group(1)))
        run["training time"] = float(mixes.group(2))
    wall = re.search(r"^WALL (\d+) s", text, re.M)
    if wall:
        run["wall"] = float(wall.group(1))
    return run


def read_long(logs: Path) -> dict[str, dict[str, float]]:
    """The 8-20-digit WERs per run from `tools.ablate --score-long`'s outputs (`long*.log`): {run name: {key: percent}}."""
    runs = {}
    for path in sorted(logs.glob("long*.log")):
        for line in path.read_text().splitlines():
            name, _, scores = line.partition(": ")
            pairs = re.findall(rf"(long\S*) ({NUMBER})%", scores)
            if pairs:
                runs[Path(name).name] = {key: float(value) for key, value in pairs}
    return runs


def paired(differences: list[float]) -> str:
    """Mean of the paired differences, its 95% bound and t, as one phrase."""
    n = len(differences)
    if n < 2:
        return f"mean {differences[0]:+.2f} (one pair: no test)"
    mean, std, error, bound = paired_bound(differences)
    t = f"{mean / error:+.2f}" if error > 0 else "undefined (no spread)"
    verdict = "excludes 0" if abs(mean) > bound else "includes 0"
    return (f"mean {mean:+.2f} ± {bound:.2f} (95%, t = {t} on {n - 1} df, needs {t_critical(n - 1):.3f}; "
            f"sd {std:.2f}): the interval {verdict}")


def collect(logs: Path, treatment: str) -> dict[tuple[str, int], dict[str, float]]:
    """Every finished run of the plain arm and of `treatment` in `logs`, with its long-string scores: {(arm, seed): numbers}."""
    runs = {}
    for arm in ("rope", treatment):
        for path in sorted(logs.glob(f"{arm}_s*.log")):
            seed = int(path.stem.split("_s")[1])
            run = read_log(path)
            if run is not None:
                runs[arm, seed] = run
    for name, scores in read_long(logs).items():
        arm, _, seed = name.partition("_s")
        if (arm, int(seed)) in runs:
            runs[arm, int(seed)].update(scores)
    return runs


def analyze(logs: Path, treatment: str = "brope") -> str:
    """The registered analysis of every finished pair (plain RoPE, `treatment`) in `logs`, as markdown."""
    arms = ("rope", treatment)
    runs = collect(logs, treatment)
    seeds = sorted({seed for arm, seed in runs if ("rope", seed) in runs and (treatment, seed) in runs})
    if not seeds:
        return "no finished pair yet"
    keys = [key for key in {**runs["rope", seeds[0]], **runs[treatment, seeds[0]]} if key != "wall"] + ["wall"]
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "--:|" * len(keys)]
    for arm in arms:
        for seed in seeds:
            run = runs[arm, seed]
            cells = [f"{run[key]:.{3 if key in MIXES else 2}f}" if key in run else "–" for key in keys]
            lines.append(f"| {arm}, seed {seed} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Pairs finished: {len(seeds)} (seeds {', '.join(map(str, seeds))}). {TREATMENTS[treatment]} − RoPE per seed:")
    lines.append("")
    for key in keys:
        if key in MIXES or not all(key in runs[arm, seed] for arm in arms for seed in seeds):
            continue
        differences = [runs[treatment, seed][key] - runs["rope", seed][key] for seed in seeds]
        role = "**primary**" if key == "test" else "secondary"
        lines.append(f"- {key} ({role}): " + ", ".join(f"{d:+.2f}" for d in differences) + f"; {paired(differences)}")
    return "\n".join(lines)


def by_seed(logs: Path, treatment: str = "brope") -> str:
    """The finished pairs one seed a row, as the README lays them out: RoPE / treatment per cell, the
    treatment's learned mixes, the whole run's seconds, and a last row of mean ± std (the per-length
    columns and the mixes left blank there)."""
    runs = collect(logs, treatment)
    seeds = sorted({seed for arm, seed in runs if ("rope", seed) in runs and (treatment, seed) in runs})
    if not seeds:
        return "no finished pair yet"
    pairs = [(runs["rope", seed], runs[treatment, seed]) for seed in seeds]
    columns = [(key, heading.format(arm=SHORT[treatment])) for key, heading in BY_SEED if all(key in run for pair in pairs for run in pair)]
    mixes = [key for key in MIXES if all(key in treated for _, treated in pairs)]
    headings = [heading for _, heading in columns] + [MIX_HEADINGS[key] for key in mixes] + ["whole run (s)"]
    lines = ["| seed | " + " | ".join(headings) + " |", "|---|" + "--:|" * len(headings)]
    for seed, (plain, treated) in zip(seeds, pairs):
        cells = [f"{plain[key]:.2f} / {treated[key]:.2f}" for key, _ in columns]
        cells += [f"{treated[key]:{'+' if key == 'betweenness_gate' else ''}.3f}" for key in mixes]
        cells.append(f"{plain['wall']:.0f} / {treated['wall']:.0f}" if "wall" in plain and "wall" in treated else "–")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")

    def spread(key: str, digits: int) -> str:
        values = [[plain[key] for plain, _ in pairs], [treated[key] for _, treated in pairs]]
        if len(seeds) < 2:
            return " / ".join(f"{arm[0]:.{digits}f}" for arm in values)
        return " / ".join(f"{statistics.mean(arm):.{digits}f} ± {statistics.stdev(arm):.{digits}f}" for arm in values)

    summary = [spread(key, 2) if not key.startswith("long_wer_") else "" for key, _ in columns] + [""] * len(mixes)
    summary.append(spread("wall", 0) if all("wall" in run for pair in pairs for run in pair) else "")
    lines.append("|" + "|".join(f" {cell} " if cell else " " for cell in [f"mean ± std of {len(seeds)}", *summary]) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, default=Path("runs/prereg/logs"), help="the folder of the runs' logs")
    parser.add_argument("--treatment", choices=TREATMENTS, default="brope",
                        help="the test: brope (--betweenness), blend (--blend-attention) or brope_blend (both flags), "
                             "each against the plain runs")
    parser.add_argument("--by-seed", action="store_true",
                        help="print the pairs one seed a row with their means (the README's table) instead of the analysis")
    args = parser.parse_args(argv)
    report = (by_seed if args.by_seed else analyze)(args.logs, args.treatment)
    print(report)
    return report


if __name__ == "__main__":
    main()
