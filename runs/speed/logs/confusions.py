"""Most frequent word errors of saved runs on the RHVoice set (`runs/synth/logs/make_rhvoice_set.py /tmp/rhvoice_set`).

Usage: python runs/speed/logs/confusions.py RUN_DIR... (from the repository root; a one-off kept as run)
"""
import csv, sys, torch, collections
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, load_audio, transcribe, word_error_rate
torch.set_num_threads(2)
data = Path("/tmp/rhvoice_set")
rows = [r for r in csv.DictReader(open(data / "metadata.csv"))]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
import difflib
for run in sys.argv[1:]:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    with torch.no_grad(): hyp = transcribe(model, tok, clips)
    c = collections.Counter(); spk = collections.Counter()
    for h, r in zip(hyp, rows):
        a, b = r["transcription"].split(), h.split()
        for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes():
            if op == "equal": continue
            c[(" ".join(a[i1:i2]), " ".join(b[j1:j2]))] += 1; spk[r["speaker"]] += max(i2 - i1, j2 - j1)
    print(run, f"{100*word_error_rate(hyp, [r['transcription'] for r in rows]):.2f}", dict(spk))
    print(c.most_common(15))
