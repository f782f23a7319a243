"""Validation WER per source of saved runs (validation minus the held-out person, as the runs saw it).

Usage: python runs/explore/logs/score_validation.py THREADS RUN_DIR... (from the repository root)
"""
import csv, sys, torch
from pathlib import Path
ROOT = Path(__file__).resolve().parents[3]  # the repository: runs/explore/logs/ is three folders down
sys.path.insert(0, str(ROOT))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, load_audio, transcribe, word_error_rate
torch.set_num_threads(int(sys.argv[1])); runs = sys.argv[2:]
rows = [r for r in csv.DictReader(open(ROOT / "data" / "metadata.csv")) if r["split"] == "validation" and r["speaker"] != "yweweler"]
clips = [load_audio(str(ROOT / "data" / r["file_name"])) for r in rows]
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    with torch.no_grad(): hyp = transcribe(model, tok, clips)
    out = []
    for src in ("espeak-ng", "fsdd"):
        idx = [i for i, r in enumerate(rows) if r["source"] == src]
        out.append(f"{src} {100 * word_error_rate([hyp[i] for i in idx], [rows[i]['transcription'] for i in idx]):.2f}% ({len(idx)})")
    print(run, "all", f"{100 * word_error_rate(hyp, [r['transcription'] for r in rows]):.2f}%", *out)
