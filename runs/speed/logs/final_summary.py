"""The README's Results rows for a default's final runs (final.sh NAME SEED...), read from their logs.

Usage: python runs/speed/logs/final_summary.py NAME
Per seed: test WER on espeak-ng, on the held-out person (fsdd) and overall; validation per source and overall; RHVoice
(rhvoice_final_NAME.txt); the whole run's wall time (final.sh's WALL) and its training time; false words per minute of
non-speech. Then the mean and the sample standard deviation over the seeds.
"""
import re, statistics, sys
from pathlib import Path

from paired_summary import SOURCES, validation  # the same log, the same final validation lines

here = Path(__file__).resolve().parent
name = sys.argv[1]
rhvoice = {int(m[1]): float(m[2]) for m in re.finditer(rf"final_{name}_s(\d+) test all ([0-9.]+)%", (here / f"rhvoice_final_{name}.txt").read_text())}


def wer(text: str, label: str) -> float:
    return float(re.findall(rf"^{label}: WER ([0-9.]+)%", text, re.M)[-1])


def minutes(seconds: int) -> str:
    return f"{seconds // 60} min {seconds % 60} s"


rows = []
for log in sorted(here.glob(f"final_{name}_s*.log"), key=lambda p: int(p.stem.rsplit("_s", 1)[1])):
    text, seed = log.read_text(errors="replace"), int(log.stem.rsplit("_s", 1)[1])
    if "test WER" not in text or seed not in rhvoice:
        continue
    val = validation(f"final_{name}", seed)
    row = dict(seed=seed, espeak=wer(text, "test espeak-ng"), person=wer(text, "test fsdd"),
               test=float(re.findall(r"^test WER ([0-9.]+)%", text, re.M)[-1]),
               val=[val[source] for source in SOURCES], val_all=val["all"], rhvoice=rhvoice[seed],
               wall=int(re.findall(r"^WALL (\d+) s", text, re.M)[-1]), train=int(val["train_s"]),
               false=float(re.findall(r"non-speech: ([0-9.]+) false words per minute", text)[-1]))
    rows.append(row)
    print(f"| {seed} | {row['espeak']:.2f}% | {row['person']:.2f}% | {row['test']:.2f}% | "
          f"{' / '.join(f'{v:.2f}' for v in row['val'])}% | {row['rhvoice']:.2f}% | "
          f"{minutes(row['wall'])} ({row['train']} s training) | {row['false']:.2f} |")


def spread(key: str) -> str:
    values = [row[key] for row in rows]
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}%" if len(values) > 1 else f"{values[0]:.2f}%"


if rows:
    val = [statistics.mean(row["val"][i] for row in rows) for i in range(3)]
    walls = sorted(row["wall"] for row in rows)
    print(f"| mean ± std, {len(rows)} seeds | **{spread('espeak')}** | **{spread('person')}** | **{spread('test')}** | "
          f"{' / '.join(f'{v:.2f}' for v in val)}% ({statistics.mean(row['val_all'] for row in rows):.2f}%) | "
          f"**{statistics.mean(row['rhvoice'] for row in rows):.2f}%** | {minutes(walls[0])} – {minutes(walls[-1])} | "
          f"{statistics.mean(row['false'] for row in rows):.2f} |")
