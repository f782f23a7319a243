"""Usage: python runs/speed/logs/rescore_rule.py THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root).
Rescoring rules on saved runs: 'veto' (today: a hypothesis CTC cannot align scores -inf) against
'abstain' (a clip with any hypothesis CTC cannot align keeps the beam's order) and 'top' (only a clip
whose beam's first hypothesis CTC cannot align keeps the beam's order). WER by source."""
import csv, sys, torch, torch.nn.functional as F
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
import brope_asr
from brope_asr import BRoPEASRForConditionalGeneration, BRoPEASRFeatureExtractor, SAMPLE_RATE, load_audio, word_error_rate
torch.set_num_threads(int(sys.argv[1])); data, split, runs = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
stats = {}
def rescore(self, ids, audio, valid, beams, rule):
    tokens = ids[:, 1:]
    ended = tokens == self.config.eos_token_id
    labels = tokens.masked_fill(ended.cumsum(1) - ended.long() > 0, -100)
    audio, valid = audio.repeat_interleave(beams, 0), valid.repeat_interleave(beams, 0)
    inputs = brope_asr._shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)
    logits = self.decoder(inputs, audio, brope_asr._key_mask(valid), None) @ self.decoder.embed_tokens.weight.T
    attention = -F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none").sum(1)
    ctc = -self.ctc_negative_log_likelihood(audio, valid, labels, zero_infinity=False)
    w = self.config.ctc_rescoring_weight
    joint = ((1 - w) * attention + w * ctc).view(-1, beams)
    cannot = torch.isinf(ctc).view(-1, beams).any(1)
    stats["clips"] = stats.get("clips", 0) + len(cannot); stats["cannot"] = stats.get("cannot", 0) + int(cannot.sum())
    top = torch.isinf(ctc).view(-1, beams)[:, 0]
    stats["top"] = stats.get("top", 0) + int(top.sum())
    if rule == "top":
        joint = torch.where(top[:, None], torch.arange(beams, 0, -1, dtype=joint.dtype)[None], joint)
    if rule == "abstain":
        joint = torch.where(cannot[:, None], torch.arange(beams, 0, -1, dtype=joint.dtype)[None], joint)
    best = joint.argmax(1)
    return ids.view(-1, beams, ids.shape[1])[torch.arange(len(best)), best]
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    fx = BRoPEASRFeatureExtractor.from_model_config(model.config)
    hyps = {n: [None] * len(clips) for n in ("veto", "abstain", "top")}
    with torch.no_grad():
        for first in range(0, len(order), 16):
            idx = order[first:first + 16]
            inputs = fx([clips[i] for i in idx], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            for rule in hyps:
                model.ctc_rescore = lambda ids, audio, valid, beams, rule=rule: rescore(model, ids, audio, valid, beams, rule)
                ids = model.generate(**inputs, num_beams=4)
                for i, t in zip(idx, tok.batch_decode(ids, skip_special_tokens=True)): hyps[rule][i] = t
    for n, h in hyps.items():
        parts = [f"all {100*word_error_rate(h, [r['transcription'] for r in rows]):.2f}%"]
        for src in sorted({r["source"] for r in rows}):
            ii = [i for i, r in enumerate(rows) if r["source"] == src]
            parts.append(f"{src} {100*word_error_rate([h[i] for i in ii], [rows[i]['transcription'] for i in ii]):.2f}%")
        print(run, split, n, " ".join(parts), flush=True)
    print(run, split, "clips with a hypothesis CTC cannot align:", stats["cannot"] // 3, "of", stats["clips"] // 3, "; beam's first:", stats["top"] // 3, flush=True); stats.clear()
