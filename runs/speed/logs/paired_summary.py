"""A validation probe against the default's validation runs, seed by seed and paired (probe.sh's logs).

Usage: python runs/speed/logs/paired_summary.py NAME [BASE] (from the repository root). Reads NAME_sS.log and
rhvoice_NAME.txt beside this script, against BASE's (default vtlp_synth: the default's five validation runs), for the
seeds both have; prints a markdown table of validation (all and per source) and RHVoice, and each difference's
mean +- t95 sd / sqrt(n) (two-sided t at 95%).
"""
import re, statistics, sys
from pathlib import Path

logs = Path(__file__).resolve().parent
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
SOURCES = ("espeak-ng", "mbrola", "fsdd")


def validation(name, seed):
    """{"all": WER, source: WER, "train_s": training seconds} of a run's final validation lines, or None if unfinished."""
    path = logs / f"{name}_s{seed}.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    found = re.findall(r"^validation WER ([\d.]+)%", text, re.M)
    if not found:
        return None
    result = {"all": float(found[-1]), "train_s": float(re.findall(r"training time (\d+) s", text)[-1])}
    for source in SOURCES:
        result[source] = float(re.findall(rf"^validation {source}: WER ([\d.]+)%", text, re.M)[-1])
    return result


def rhvoice(name, seed):
    """{"all": WER} of rhvoice_NAME.txt's line for the seed's run, or None."""
    path = logs / f"rhvoice_{name}.txt"
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.split()[0].endswith(f"{name}_s{seed}"):
            return {"all": float(re.search(r" all ([\d.]+)%", line).group(1))}
    return None


def interval(values):
    n = len(values)
    mean = statistics.mean(values)
    return f"{mean:+.2f} ± {T95[n - 1] * statistics.stdev(values) / n ** 0.5:.2f}" if n > 1 else f"{mean:+.2f}"


def main():
    name, base = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "vtlp_synth"
    columns = ["all", *SOURCES]
    print(f"| seed | validation {base} / {name} | " + " | ".join(f"{s} " for s in SOURCES) + f"| RHVoice {base} / {name} | training s |")
    print("|---|" + "---|" * (len(SOURCES) + 3))
    diffs = {key: [] for key in [*columns, "rhvoice"]}
    means = {key: ([], []) for key in ("validation", "rhvoice")}
    for seed in range(10):
        a, b = validation(base, seed), validation(name, seed)
        ra, rb = rhvoice(base, seed), rhvoice(name, seed)
        if not (a and b and ra and rb):
            continue
        for key in columns:
            diffs[key].append(b[key] - a[key])
        diffs["rhvoice"].append(rb["all"] - ra["all"])
        for key, pair in (("validation", (a["all"], b["all"])), ("rhvoice", (ra["all"], rb["all"]))):
            means[key][0].append(pair[0]), means[key][1].append(pair[1])
        print(f"| {seed} | " + " | ".join(f"{a[k]:.2f} / {b[k]:.2f}%" for k in columns)
              + f" | {ra['all']:.2f} / {rb['all']:.2f}% | {a['train_s']:.0f} / {b['train_s']:.0f} |")
    n = len(diffs["all"])
    if n:
        print(f"| {name} - {base}, {n} seeds | " + " | ".join(interval(diffs[k]) for k in columns) + f" | {interval(diffs['rhvoice'])} | |")
        for key, (x, y) in means.items():
            print(f"mean {key} WER over these seeds: {base} {statistics.mean(x):.2f}%, {name} {statistics.mean(y):.2f}%")


if __name__ == "__main__":
    main()
