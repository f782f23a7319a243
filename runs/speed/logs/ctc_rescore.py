"""Would the CTC head help decoding? A diagnostic on saved runs trained with --ctc-weight (never the test split of data/).

For each clip (decoded whole, as evaluation does): greedy; beam 4; the beam's 4 hypotheses rescored by
(1 - L) log p_attention + L log p_CTC for L in LAMBDAS; and CTC's own greedy path (argmax, repeats merged,
blanks dropped). Prints WER per source.
Usage: python runs/speed/logs/ctc_rescore.py THREADS DATA_DIR SPLIT RUN_DIR... (from the repository root)
"""
import csv, sys, torch
import torch.nn.functional as F
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from transformers import PreTrainedTokenizerFast
from brope_asr import BRoPEASRForConditionalGeneration, BRoPEASRFeatureExtractor, SAMPLE_RATE, load_audio, word_error_rate

LAMBDAS, BEAMS, BATCH = (0.3, 0.5, 0.7), 4, 16
torch.set_num_threads(int(sys.argv[1])); data, split, runs = Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
rows = [r for r in csv.DictReader(open(data / "metadata.csv")) if r["split"] == split and r["speaker"] != "yweweler"]
clips = [load_audio(str(data / r["file_name"])) for r in rows]
order = sorted(range(len(clips)), key=lambda i: len(clips[i]))  # batches of like length
for run in runs:
    model = BRoPEASRForConditionalGeneration.from_pretrained(run).eval(); tok = PreTrainedTokenizerFast.from_pretrained(run)
    features = BRoPEASRFeatureExtractor.from_model_config(model.config); c = model.config
    hyps = {name: [None] * len(clips) for name in ["greedy", "beam4", "ctc_greedy"] + [f"rescore{l}" for l in LAMBDAS]}
    with torch.no_grad():
        for first in range(0, len(order), BATCH):
            idx = order[first:first + BATCH]
            inputs = features([clips[i] for i in idx], sampling_rate=SAMPLE_RATE, return_tensors="pt")
            for name, ids in (("greedy", model.generate(**inputs)), ("beam4", model.generate(**inputs, num_beams=BEAMS))):
                for i, text in zip(idx, tok.batch_decode(ids, skip_special_tokens=True)): hyps[name][i] = text
            audio = model.encoder(inputs.get("input_features"), inputs.get("waveform"), inputs["attention_mask"])[0]
            valid = model.encoder.output_valid(inputs["attention_mask"].bool())
            log_probs = model.ctc_head(audio).float().log_softmax(-1)  # (B, T', V)
            for i, row, frames in zip(idx, log_probs.argmax(-1), valid.sum(1)):
                path = torch.unique_consecutive(row[:frames]).tolist()
                hyps["ctc_greedy"][i] = tok.decode([t for t in path if t != c.pad_token_id], skip_special_tokens=True)
            nbest = model.generate(**inputs, num_beams=BEAMS, num_return_sequences=BEAMS)  # (B * 4, S), start token first
            labels = nbest[:, 1:].clone()  # generate pads finished rows with eos: keep the first, ignore the rest
            labels[(labels == c.eos_token_id).long().cumsum(1) - (labels == c.eos_token_id).long() > 0] = -100
            rep = lambda x: x.repeat_interleave(BEAMS, 0)
            logits = model(encoder_outputs=(rep(audio),), attention_mask=rep(inputs["attention_mask"]), labels=labels).logits
            attention = -F.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none").sum(1)
            special = torch.tensor([c.pad_token_id, c.bos_token_id, c.eos_token_id])
            keep = (labels != -100) & ~torch.isin(labels, special)
            ctc = -F.ctc_loss(rep(log_probs).transpose(0, 1), labels[keep], rep(valid.sum(1)), keep.sum(1),
                              blank=c.pad_token_id, reduction="none", zero_infinity=False)
            texts = tok.batch_decode(nbest, skip_special_tokens=True)
            for l in LAMBDAS:
                best = ((1 - l) * attention + l * ctc).view(-1, BEAMS).argmax(1)
                for k, i in enumerate(idx): hyps[f"rescore{l}"][i] = texts[k * BEAMS + int(best[k])]
    for name, h in hyps.items():
        out = [f"{src} {100 * word_error_rate([h[i] for i, r in enumerate(rows) if r['source'] == src], [r['transcription'] for r in rows if r['source'] == src]):.2f}%"
               for src in sorted({r["source"] for r in rows})]
        print(run, split, f"{name:12s}", "all", f"{100 * word_error_rate(h, [r['transcription'] for r in rows]):.2f}%", *out, flush=True)
