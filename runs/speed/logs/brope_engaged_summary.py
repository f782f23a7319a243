"""The engaged-bRoPE measurement against the plain default, per seed and paired (brope_engaged_rule.md).

Usage: python runs/speed/logs/brope_engaged_summary.py (from the repository root, once every run has its logs). The gates per
layer are read from the saved models, runs/speed/brope_engaged_s*/, which git does not keep; the rest from the logs here.
"""
import csv, math, re, statistics, sys
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from brope_asr import BRoPEASRForConditionalGeneration

logs = Path("runs/speed/logs")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def validation(log):  # the run's last line "validation WER x% ..."; and its per-source lines
    text = log.read_text(errors="replace")
    return float(re.findall(r"^validation WER ([\d.]+)%", text, re.M)[-1]), float(re.findall(r"training time (\d+) s", text)[-1])


def by_run(path, key):  # "RUN test all x% ..." or "RUN: long_wer x%, ..."
    found = {}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if not line.strip():
            continue
        run = Path(line.split()[0].rstrip(":")).name
        match = re.search(key + r" ([\d.]+)%", line)
        if match:
            found[run] = float(match.group(1))
    return found


rh_plain, rh_engaged = by_run(logs / "rhvoice_vtlp_synth.txt", "all"), by_run(logs / "rhvoice_brope_engaged.txt", "all")
long_plain, long_engaged = (by_run(logs / f"long_greedy_{name}.log", key) for name, key in (("final_vtlp_all", "long_wer"), ("brope_engaged", "long_wer")))
buckets = {b: (by_run(logs / "long_greedy_final_vtlp_all.log", f"long_wer_{b}"), by_run(logs / "long_greedy_brope_engaged.log", f"long_wer_{b}"))
           for b in ("8_10", "11_14", "15_20")}
rows, diffs = [], {"validation": [], "RHVoice": [], "8-20 digits": [], "8-10": [], "11-14": [], "15-20": []}
for seed in range(5):
    engaged = logs / f"brope_engaged_s{seed}.log"
    if not engaged.exists() or "validation WER" not in engaged.read_text(errors="replace"):
        continue
    v0, t0 = validation(logs / f"vtlp_synth_s{seed}.log")
    v1, t1 = validation(engaged)
    model = BRoPEASRForConditionalGeneration.from_pretrained(f"runs/speed/brope_engaged_s{seed}")
    gates = {n: torch.tanh(p).item() for n, p in model.named_parameters() if n.endswith(".gate")}
    enc = [g for n, g in gates.items() if n.startswith("encoder")]
    dec = [g for n, g in gates.items() if n.startswith("decoder")]
    with open(logs / f"brope_engaged_s{seed}_mixes.csv") as f:
        last = list(csv.DictReader(f))[-1]
    p, e = f"final_vtlp_all_s{seed}", f"brope_engaged_s{seed}"
    rows.append(f"| {seed} | {v0:.2f} / {v1:.2f}% | {rh_plain[f'vtlp_synth_s{seed}']:.2f} / {rh_engaged[e]:.2f}% | "
                f"{long_plain[p]:.2f} / {long_engaged[e]:.2f}% | "
                + " | ".join(f"{buckets[b][0][p]:.2f} / {buckets[b][1][e]:.2f}" for b in ("8_10", "11_14", "15_20"))
                + f" | {' '.join(f'{g:+.2f}' for g in enc)} ; {' '.join(f'{g:+.2f}' for g in dec)} | "
                f"{float(last['shift_encoder_spread']):.2f} / {float(last['shift_decoder_spread']):.2f} | {t0:.0f} / {t1:.0f} |")
    diffs["validation"].append(v1 - v0)
    diffs["RHVoice"].append(rh_engaged[e] - rh_plain[f"vtlp_synth_s{seed}"])
    diffs["8-20 digits"].append(long_engaged[e] - long_plain[p])
    for b, name in (("8_10", "8-10"), ("11_14", "11-14"), ("15_20", "15-20")):
        diffs[name].append(buckets[b][1][e] - buckets[b][0][p])
print("| seed | validation, plain / engaged | RHVoice | 8-20 digits (greedy) | 8-10 | 11-14 | 15-20 | gates at the end, tanh g: encoder layers ; decoder layers | shift spread at the end, encoder frames / characters | training (s), plain / engaged |")
print("|---|--:|--:|--:|--:|--:|--:|---|--:|--:|")
print("\n".join(rows))
for name, d in diffs.items():
    n = len(d)
    if n > 1:
        sd = statistics.stdev(d)
        print(f"{name}: engaged - plain {', '.join(f'{x:+.2f}' for x in d)}; mean {statistics.mean(d):+.2f} +- {T95[n - 1] * sd / math.sqrt(n):.2f} (95%, t on {n - 1} df), sd {sd:.2f}")
