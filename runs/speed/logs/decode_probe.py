"""Decoding probes on saved runs trained with CTC (never the test split of data/): WER by source for
each way of decoding that MODE compares, every clip decoded whole in batches of 16 of like length.

  modes   greedy, a beam of 4, and the beam of 4 rescored with CTC (the model's weight)
  rules   rescoring a beam of 4 with three rules for hypotheses CTC cannot align (-inf):
          'veto' (the code's: such a hypothesis loses), 'abstain' (a clip with any such
          hypothesis keeps the beam's order), 'top' (only a clip whose beam's first
          hypothesis is such keeps the beam's order); and how many clips have them
  widths  beams of 2, 4 and 8, each rescored with CTC, with decoding seconds
  wider   beams of 8 and 16, each rescored with CTC, with decoding seconds
  weights a beam of 8 rescored with CTC at weights 0.3, 0.5 and 0.7

Usage: python runs/speed/logs/decode_probe.py MODE THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root)
"""
import csv, sys, time, torch, torch.nn.functional as F
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
import brope_asr
from brope_asr import BRoPEASRForConditionalGeneration, BRoPEASRFeatureExtractor, SAMPLE_RATE, load_audio, word_error_rate

mode, threads, data, split, runs = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5:]
torch.set_num_threads(threads)
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
order = sorted(range(len(clips)), key=lambda i: len(clips[i]))
counts = {"clips": 0, "any": 0, "first": 0}


def rescore_with_rule(model, ids, audio, valid, beams, rule):
    """`BRoPEASRForConditionalGeneration.ctc_rescore` with `rule` for the -inf hypotheses."""
    c = model.config
    tokens = ids[:, 1:]
    ended = tokens == c.eos_token_id
    labels = tokens.masked_fill(ended.cumsum(1) - ended.long() > 0, -100)
    audio, valid = audio.repeat_interleave(beams, 0), valid.repeat_interleave(beams, 0)
    inputs = brope_asr._shift_tokens_right(labels, c.pad_token_id, c.decoder_start_token_id)
    logits = model.decoder(inputs, audio, brope_asr._key_mask(valid), None) @ model.decoder.embed_tokens.weight.T
    attention = -F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none").sum(1)
    ctc = -model.ctc_negative_log_likelihood(audio, valid, labels, zero_infinity=False)
    joint = ((1 - c.ctc_rescoring_weight) * attention + c.ctc_rescoring_weight * ctc).view(-1, beams)
    unalignable = torch.isinf(ctc).view(-1, beams)
    if rule == "veto":  # counted once per batch
        counts["clips"] += len(joint); counts["any"] += int(unalignable.any(1).sum()); counts["first"] += int(unalignable[:, 0].sum())
    keep_order = {"veto": None, "abstain": unalignable.any(1), "top": unalignable[:, 0]}[rule]
    if keep_order is not None:
        joint = torch.where(keep_order[:, None], torch.arange(beams, 0, -1, dtype=joint.dtype)[None], joint)
    best = joint.argmax(1)
    return ids.view(-1, beams, ids.shape[1])[torch.arange(len(best)), best]


def decoders(model):
    """{name: inputs -> ids} for this MODE."""
    def with_weight(weight, beams):
        def run(inputs):
            kept, model.config.ctc_rescoring_weight = model.config.ctc_rescoring_weight, weight
            try:
                return model.generate(**inputs, num_beams=beams)
            finally:
                model.config.ctc_rescoring_weight = kept
        return run

    def with_rule(rule):
        def run(inputs):
            model.ctc_rescore = lambda ids, audio, valid, beams: rescore_with_rule(model, ids, audio, valid, beams, rule)
            try:
                return model.generate(**inputs, num_beams=4)
            finally:
                del model.ctc_rescore
        return run

    weight = model.config.ctc_rescoring_weight
    return {
        "modes": {"greedy": with_weight(weight, 1), "beam4": with_weight(0.0, 4), "rescored": with_weight(weight, 4)},
        "rules": {rule: with_rule(rule) for rule in ("veto", "abstain", "top")},
        "widths": {f"beam {w}": with_weight(weight, w) for w in (2, 4, 8)},
        "wider": {f"beam {w}": with_weight(weight, w) for w in (8, 16)},
        "weights": {f"beam 8, weight {w}": with_weight(w, 8) for w in (0.3, 0.5, 0.7)},
    }[mode]


for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(run)
    features = BRoPEASRFeatureExtractor.from_model_config(model.config)
    ways = decoders(model)
    hypotheses, seconds = {name: [None] * len(clips) for name in ways}, dict.fromkeys(ways, 0.0)
    with torch.no_grad():
        for first in range(0, len(order), 16):
            batch = order[first:first + 16]
            inputs = features([clips[i] for i in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            for name, decode in ways.items():
                start = time.perf_counter()
                ids = decode(inputs)
                seconds[name] += time.perf_counter() - start
                for i, text in zip(batch, tokenizer.batch_decode(ids, skip_special_tokens=True)):
                    hypotheses[name][i] = text
    for name, texts in hypotheses.items():
        parts = [f"all {100 * word_error_rate(texts, [r['transcription'] for r in rows]):.2f}%"]
        for source in sorted({r["source"] for r in rows}):
            mine = [i for i, r in enumerate(rows) if r["source"] == source]
            parts.append(f"{source} {100 * word_error_rate([texts[i] for i in mine], [rows[i]['transcription'] for i in mine]):.2f}%")
        timing = f" ({seconds[name]:.1f} s decoding)" if mode in ("widths", "wider") else ""
        print(run, split, name, " ".join(parts) + timing, flush=True)
    if mode == "rules":
        print(run, split, "clips with a hypothesis CTC cannot align:", counts["any"], "of", counts["clips"],
              "; beam's first:", counts["first"], flush=True)
        counts.update(clips=0, any=0, first=0)
