"""Usage: python runs/speed/logs/beam_width.py THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root).
WER of saved CTC runs decoded with beams of 2, 4 (the default) and 8, each rescored with CTC, by source."""
import csv, sys, time, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, BRoPEASRFeatureExtractor, SAMPLE_RATE, load_audio, word_error_rate
torch.set_num_threads(int(sys.argv[1])); data, split, runs = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
WIDTHS = (2, 4, 8)
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    fx = BRoPEASRFeatureExtractor.from_model_config(model.config)
    hyps, seconds = {w: [None] * len(clips) for w in WIDTHS}, dict.fromkeys(WIDTHS, 0.0)
    with torch.no_grad():
        for first in range(0, len(order), 16):
            idx = order[first:first + 16]
            inputs = fx([clips[i] for i in idx], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            for w in WIDTHS:
                start = time.perf_counter(); ids = model.generate(**inputs, num_beams=w); seconds[w] += time.perf_counter() - start
                for i, t in zip(idx, tok.batch_decode(ids, skip_special_tokens=True)): hyps[w][i] = t
    for w, h in hyps.items():
        parts = [f"all {100*word_error_rate(h, [r['transcription'] for r in rows]):.2f}%"]
        for src in sorted({r["source"] for r in rows}):
            ii = [i for i, r in enumerate(rows) if r["source"] == src]
            parts.append(f"{src} {100*word_error_rate([h[i] for i in ii], [rows[i]['transcription'] for i in ii]):.2f}%")
        print(run, split, f"beam {w}", " ".join(parts), f"({seconds[w]:.1f} s decoding, shared cores)", flush=True)
