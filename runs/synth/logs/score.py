"""WER per source of saved runs on one split of a corpus folder (a diagnostic; never the test split of data/).

Usage: python runs/synth/logs/score.py [--every-speaker] THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root)
yweweler's rows are left out (the held-out-speaker guide) unless --every-speaker is given.
"""
import csv, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, load_audio, transcribe, word_error_rate
every = sys.argv[1] == "--every-speaker"; argv = sys.argv[1 + every:]
torch.set_num_threads(int(argv[0])); data, split, runs = Path(argv[1]), argv[2], argv[3:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split and (every or r["speaker"] != "yweweler")]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    with torch.no_grad(): hyp = transcribe(model, tok, clips)
    out = []
    for src in sorted({r["source"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["source"] == src]
        out.append(f"{src} {100 * word_error_rate([hyp[i] for i in idx], [rows[i]['transcription'] for i in idx]):.2f}% ({len(idx)})")
    print(run, split, "all", f"{100 * word_error_rate(hyp, [r['transcription'] for r in rows]):.2f}%", *out, flush=True)
