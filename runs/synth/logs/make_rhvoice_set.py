"""A diagnostic set of an engine in no training split: RHVoice (not shipped in data/, see data/README.md).

100 strings of 1-7 digits in RHVoice's two English voices not built from CMU ARCTIC (evgeniy-eng,
lyubov), rate 50-100 and pitch 0-100 of its scale, 16 kHz FLAC, trimmed as tools.make_corpus does.
Usage (repository root; `apt-get install rhvoice rhvoice-english sox`):
    python runs/synth/logs/make_rhvoice_set.py OUT_DIR
"""
import csv, os, subprocess, sys, tempfile
from pathlib import Path
import numpy as np, soundfile as sf
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from tools.make_corpus import DIGIT_WORDS, trim_silence

out = Path(sys.argv[1]); (out / "test").mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng([0, 7])
rows = []
for index in range(100):
    words = [DIGIT_WORDS[d] for d in rng.integers(0, 10, size=rng.integers(1, 8))]
    voice = str(rng.choice(["evgeniy-eng", "lyubov"])); rate = int(rng.integers(50, 101)); pitch = int(rng.integers(0, 101))
    with tempfile.TemporaryDirectory() as folder:
        wav = os.path.join(folder, "clip.wav")
        subprocess.run(["RHVoice-test", "-p", voice, "-r", str(rate), "-t", str(pitch), "-o", wav], input=" ".join(words).encode(), check=True, capture_output=True)
        raw = subprocess.run(["sox", "-D", "-G", wav, "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-", "rate", "-v", "16000"], capture_output=True, check=True).stdout
    audio = trim_silence(np.frombuffer(raw, dtype="<i2"), 16000)
    name = f"test/rhvoice-{index:03d}.flac"
    sf.write(out / name, audio, 16000, subtype="PCM_16", format="FLAC")
    rows.append((name, " ".join(words), "test", "rhvoice", f"rhvoice-{voice}"))
with open(out / "metadata.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n"); w.writerow(("file_name", "transcription", "split", "source", "speaker")); w.writerows(rows)
print(f"wrote {len(rows)} clips to {out}")
