"""A diagnostic set of espeak-ng settings outside the corpus's ranges (not shipped; never used to choose).

100 strings of 1-7 digits, each in a voice no training clip has (every accent of tools.make_corpus with one of
the test variants or "Mr serious", a variant no split uses) and with one setting beyond what training drew:
  fast        350-500 words a minute (training: 80-350)
  gaps        word gaps of 130-400 ms (training: 0-120 ms)
  intonation  SSML prosody pitch and range at x-low or x-high (training: espeak-ng's default range)
16 kHz FLAC, trimmed as tools.make_corpus does. It stands in for issue 10's held-out "unusual espeak-ng settings",
whose exact settings this repository does not have; it is scored beside RHVoice, never used to pick anything.
Usage (repository root; `apt-get install espeak-ng sox`):
    python runs/synth/logs/make_espeak_unusual_set.py OUT_DIR
"""
import csv, sys
from pathlib import Path
import numpy as np, soundfile as sf
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tools.make_corpus import DIGIT_WORDS, LANGUAGES, PITCH, SAMPLE_RATE, SPEED_WPM, TEST_VARIANTS, WORD_GAP, synthesize, trim_silence

KINDS = ("fast", "gaps", "intonation")
out = Path(sys.argv[1]); (out / "test").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng([0, 11])
rows = []
for index in range(100):
    words = [DIGIT_WORDS[d] for d in rng.integers(0, 10, size=rng.integers(1, 8))]
    voice = f"{rng.choice(LANGUAGES)}+{rng.choice(TEST_VARIANTS + ('Mr serious',))}"
    kind = KINDS[index % 3]
    speed = int(rng.integers(SPEED_WPM[1], 501)) if kind == "fast" else int(np.exp(rng.uniform(*np.log(SPEED_WPM))))
    gap = int(rng.integers(WORD_GAP[1] + 1, 41)) if kind == "gaps" else int(rng.integers(WORD_GAP[0], WORD_GAP[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    text = " ".join(words)
    if kind == "intonation":
        level, spread = rng.choice(["x-low", "x-high"]), rng.choice(["x-low", "x-high"])
        text = f'<speak><prosody pitch="{level}" range="{spread}">{text}</prosody></speak>'
    audio = trim_silence(synthesize(text, voice, speed, pitch, gap, ssml=kind == "intonation"), SAMPLE_RATE)
    name = f"test/unusual-{index:03d}.flac"
    sf.write(out / name, audio, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    rows.append((name, " ".join(words), "test", kind, voice))
with open(out / "metadata.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n"); w.writerow(("file_name", "transcription", "split", "source", "speaker")); w.writerows(rows)
print(f"wrote {len(rows)} clips to {out}")
