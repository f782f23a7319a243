"""WER per source of saved runs on one split of a corpus folder (a diagnostic; never the test split of data/); every row of SPLIT.

Usage: python runs/speed/logs/ema_score.py THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root)
"""
import csv, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, load_audio, transcribe, word_error_rate
torch.set_num_threads(int(sys.argv[1])); data, split, runs = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    with torch.no_grad(): hyp = transcribe(model, tok, clips)
    out = []
    for src in sorted({r["source"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["source"] == src]
        out.append(f"{src} {100 * word_error_rate([hyp[i] for i in idx], [rows[i]['transcription'] for i in idx]):.2f}% ({len(idx)})")
    print(run, split, "all", f"{100 * word_error_rate(hyp, [r['transcription'] for r in rows]):.2f}%", *out, flush=True)
