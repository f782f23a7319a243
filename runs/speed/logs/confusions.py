"""Word confusions of saved runs on one split of a corpus folder (a diagnostic; never the test split of data/).

Usage: python runs/speed/logs/confusions.py THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root)
Prints each run's WER per speaker, then, over all runs, the count of substitutions, insertions and deletions
and the 25 commonest (reference, hypothesis) pairs ("-" for a missing word).
"""
import collections, csv, sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, load_audio, transcribe, word_error_rate


def alignment(hypothesis: str, reference: str) -> list[tuple[str, str, str]]:
    """A minimum edit script of words: (kind, reference word or "-", hypothesis word or "-"), errors only."""
    hyp, ref = hypothesis.split(), reference.split()
    d = [[i + j if not i * j else 0 for j in range(len(hyp) + 1)] for i in range(len(ref) + 1)]
    for i in range(1, len(ref) + 1):
        for j in range(1, len(hyp) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    i, j, ops = len(ref), len(hyp), []
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] != hyp[j - 1]:
                ops.append(("S", ref[i - 1], hyp[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            ops.append(("D", ref[i - 1], "-")); i -= 1
        else:
            ops.append(("I", "-", hyp[j - 1])); j -= 1
    return ops


torch.set_num_threads(int(sys.argv[1])); data, split, runs = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
kinds, pairs = collections.Counter(), collections.Counter()
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    with torch.no_grad():
        hyp = transcribe(model, tok, clips)
    for speaker in sorted({r["speaker"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["speaker"] == speaker]
        print(run, speaker, f"{100 * word_error_rate([hyp[i] for i in idx], [rows[i]['transcription'] for i in idx]):.2f}%", flush=True)
    for h, r in zip(hyp, rows):
        for kind, ref_word, hyp_word in alignment(h, r["transcription"]):
            kinds[kind] += 1; pairs[(ref_word, hyp_word)] += 1
print(dict(kinds)); print(pairs.most_common(25))
