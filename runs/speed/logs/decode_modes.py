"""Usage: python runs/speed/logs/decode_modes.py THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root).
Validation WER of saved runs: greedy, beam 4, beam 4 rescored with CTC (the model's default), by source."""
import csv, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, BRoPEASRFeatureExtractor, SAMPLE_RATE, load_audio, word_error_rate
torch.set_num_threads(int(sys.argv[1])); data, split, runs = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    fx = BRoPEASRFeatureExtractor.from_model_config(model.config)
    hyps = {n: [None] * len(clips) for n in ("greedy", "beam4", "rescored")}
    with torch.no_grad():
        for first in range(0, len(order), 16):
            idx = order[first:first + 16]
            inputs = fx([clips[i] for i in idx], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            w = model.config.ctc_rescoring_weight
            outs = {"greedy": model.generate(**inputs, num_beams=1), "rescored": model.generate(**inputs, num_beams=4)}
            model.config.ctc_rescoring_weight = 0.0
            outs["beam4"] = model.generate(**inputs, num_beams=4)
            model.config.ctc_rescoring_weight = w
            for n, ids in outs.items():
                for i, t in zip(idx, tok.batch_decode(ids, skip_special_tokens=True)): hyps[n][i] = t
    for n, h in hyps.items():
        parts = [f"all {100*word_error_rate(h, [r['transcription'] for r in rows]):.2f}%"]
        for src in sorted({r["source"] for r in rows}):
            ii = [i for i, r in enumerate(rows) if r["source"] == src]
            parts.append(f"{src} {100*word_error_rate([h[i] for i in ii], [rows[i]['transcription'] for i in ii]):.2f}%")
        print(run, split, n, " ".join(parts), flush=True)
