"""Validation WER per source of saved runs (validation minus the held-out person, as the runs saw it)."""
import csv, sys, torch
sys.path.insert(0, "/work/main")
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, load_audio, transcribe, word_error_rate
torch.set_num_threads(int(sys.argv[1])); runs = sys.argv[2:]
rows = [r for r in csv.DictReader(open("/work/main/data/metadata.csv")) if r["split"] == "validation" and r["speaker"] != "yweweler"]
clips = [load_audio("/work/main/data/" + r["file_name"]) for r in rows]
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    with torch.no_grad(): hyp = transcribe(model, tok, clips)
    out = []
    for src in ("espeak-ng", "fsdd"):
        idx = [i for i, r in enumerate(rows) if r["source"] == src]
        out.append(f"{src} {100 * word_error_rate([hyp[i] for i in idx], [rows[i]['transcription'] for i in idx]):.2f}% ({len(idx)})")
    print(run, "all", f"{100 * word_error_rate(hyp, [r['transcription'] for r in rows]):.2f}%", *out)
