#!/usr/bin/env python3
"""Generate the embedded spoken-digits corpus in ``data/``: espeak-ng, MBROLA, Pico and FSDD.

brope-asr ships its own tiny corpus so that training and evaluation run end to
end from a fresh clone: offline and reproducible. Every synthetic clip is 1-7
connected English digits ("three one four"): most from the espeak-ng formant
synthesizer with a randomly drawn accent, voice variant, speaking rate and
pitch; the rest from MBROLA's diphone voices (recordings of real people, many
of them speaking English with another language's sounds) and SVOX Pico, with
drawn speed, pitch and vocal tract length. The real people are the Free Spoken
Digit Dataset's recordings of isolated digits (copied from ../shared/fsdd).

Output, in the Hugging Face "audiofolder" layout (``file_name`` is relative to
the folder holding ``metadata.csv``)::

    data/metadata.csv                          file_name,transcription,split,source,speaker
    data/train/NNNNNN.mp3                      espeak-ng, 16 kHz, mono, MP3 (lossy, ~33 kbit/s)
    data/{validation,test}/NNNNNN.flac         espeak-ng, 16 kHz, mono, 16-bit FLAC
    data/train/other-NNNNNN.mp3                MBROLA and Pico, 8 kHz, mono, MP3
    data/validation/other-NNNNNN.flac          MBROLA, 8 kHz, mono, 16-bit FLAC
    data/train/fsdd-*.mp3                      FSDD, 8 kHz, mono, MP3
    data/{validation,test}/fsdd-*.flac         FSDD, 8 kHz, mono, 16-bit FLAC (lossless)

Training clips are MP3: a third of the bytes of the 12-bit FLAC below, so the
30 MB budget holds 2.9 times as many training utterances (what generalizes to
voices never heard); the codec's small changes to the sound act as a mild
channel perturbation. Validation and test clips, which measure, stay FLAC:
16-bit containers, but each synthetic clip is quantized (with TPDF dither) to
--bits significant bits, default 12, i.e. every sample is a multiple of 16:
FLAC detects the constant zero low bits ("wasted bits") and does not store
them, which makes clips ~36% smaller.

Splits (no voice or person in two, but the FSDD training people's validation recordings):
    train       training voices (TRAIN_VARIANTS x every accent, OTHER_SPLIT_VOICES["train"]),
                three FSDD people's recordings 0-44 of each digit
    validation  voices never trained on (VALIDATION_VARIANTS, OTHER_SPLIT_VOICES["validation"]),
                the same three people's recordings 45-49
    test        voices and a person never trained on or validated with
                (TEST_VARIANTS x every accent; FSDD_TEST_SPEAKERS, all their recordings)

Regenerate (deterministic for a given --seed, --bits and split counts; each
split has its own random stream and each clip its own dither stream, so
changing one split's count leaves the other splits, and that split's first
clips, as they are)::

    apt-get install espeak-ng sox
    apt-get install <OTHER_PACKAGES>   # Debian's contrib and non-free sections (data/README.md)
    python -m tools.make_corpus

The synthesizers and sox are needed only here; the recognizer reads the audio
files with soundfile (its libsndfile decodes MP3 since 1.1).
"""

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf

# --- Voices -----------------------------------------------------------------
# Every English accent espeak-ng 1.51 has. British is addressed as "en", not "en-gb": espeak-ng
# 1.51 silently drops the "+variant" suffix from "en-gb" (check_voices catches such merges).
LANGUAGES = ("en-us", "en", "en-us-nyc", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
             "en-gb-x-rp", "en-029")

# Every variant of `espeak-ng --voices=variant` (the files in espeak-ng-data/voices/!v), novelty
# voices included (whisper, croak, robots): a recognizer for unheard voices should have heard as
# many kinds as exist. Left out: "fast" (a speed test, identical to the plain voice) and
# "Mr serious" (a space in its name).
VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo", "Gene",
    "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen",
    "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot", "adam", "anika",
    "anikaRobot", "announcer", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb", "croak",
    "david", "ed", "edward", "edward2", "f1", "f2", "f3", "f4", "f5", "grandma", "grandpa", "gustave",
    "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "klatt", "klatt2", "klatt3", "klatt4",
    "klatt5", "klatt6", "linda", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "marcelo", "max",
    "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "robosoft",
    "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7", "robosoft8",
    "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "whisper", "whisperf", "zac",
)
# Held-out variants, with every accent, so no voice/variant pair is in two splits. Test keeps the
# four of the first corpus (two male, m3 and the Klatt klatt2; two female, f2 and linda);
# validation has five of its own, so it too measures voices never trained on.
TEST_VARIANTS = ("m3", "klatt2", "f2", "linda")
VALIDATION_VARIANTS = ("m6", "f4", "klatt5", "steph2", "benjamin")
TRAIN_VARIANTS = tuple(v for v in VARIANTS if v not in TEST_VARIANTS + VALIDATION_VARIANTS)
SPLIT_VARIANTS = {"train": TRAIN_VARIANTS, "validation": VALIDATION_VARIANTS, "test": TEST_VARIANTS}

# Prosody, drawn per utterance. Speed in words per minute, log-uniform over espeak-ng's usable
# range (its default is 175, its minimum 80; above ~350 words run together); pitch on espeak-ng's
# 0-99 scale (default 50), relative to each variant's own range; word gap in units of 10 ms
# (espeak-ng -g; 0 is its default).
SPEED_WPM = (80, 350)
PITCH = (0, 99)
WORD_GAP = (0, 12)

# --- Text -------------------------------------------------------------------
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Utterance length in digits, uniform over this inclusive range.
NUM_DIGITS = (1, 7)
LONG_DIGITS = (8, 20)  # --long: strings longer than any in training, to measure length generalization
LONG_STREAM = 3  # the --long set's random stream (the splits use 0, 1, 2)

# --- Other synthesizers ---------------------------------------------------------------------------
# Voices of two engines unlike espeak-ng's formant synthesis, from Debian's contrib and non-free
# sections. MBROLA: diphones cut from recordings of real people, with espeak-ng as the text front
# end; its four English voices, and the voices of other languages that espeak-ng maps English onto
# (`espeak-ng --voices=mb`: English spoken with those people's accents, as a German or a Swede
# speaks it), but de4, whose licence forbids some uses of it. SVOX Pico's two English voices
# (HMM-based). Left out (data/README.md): flite and festival (reserved for evaluation), RHVoice's
# English voices (four are built from the CMU ARCTIC recordings, the people of flite's and
# festival's voices; the other two are licensed for non-commercial use only).
OTHER_TOOLS = ("mbrola", "pico2wave")
MBROLA_VOICES = ("us1", "us2", "us3", "en1", "af1-en", "nl2-en", "fr1-en", "fr4-en", "de1-en", "de2-en", "de3-en",
                 "de5-en", "de6-en", "gr2-en", "hu1-en", "pl1-en", "ro1-en", "sw1-en", "sw2-en")
OTHER_PACKAGES = " ".join(["mbrola", *(f"mbrola-{v.removesuffix('-en')}" for v in MBROLA_VOICES), "libttspico-utils"])
OTHER_VOICES = {  # name: (source, the engine's own voice name)
    **{f"mbrola-{v}": ("mbrola", f"mb-{v}") for v in MBROLA_VOICES},
    "pico-en-US": ("pico", "en-US"), "pico-en-GB": ("pico", "en-GB"),
}
# Validation has two MBROLA voices never trained on, a native and an accented one, so it measures
# unheard voices of another engine. The test split gets none (it stays the split every earlier
# result read).
OTHER_VALIDATION_VOICES = ("mbrola-us3", "mbrola-pl1-en")
OTHER_SPLIT_VOICES = {
    "train": tuple(v for v in OTHER_VOICES if v not in OTHER_VALIDATION_VOICES),
    "validation": OTHER_VALIDATION_VOICES,
}
OTHER_COUNTS = {"train": 1300, "validation": 90}
OTHER_STREAMS = {"train": 4, "validation": 5}  # random streams of their own (espeak-ng's splits use 0-2, --long 3)
# Prosody, drawn per utterance on each engine's own scale: MBROLA through espeak-ng in words per
# minute (log-uniform over a narrower range than espeak-ng's, as a guess at where diphones recorded
# at one speed still sound like speech; not measured) and espeak-ng's 0-99 pitch;
# Pico's speed and pitch in percent of its default (its markup).
MBROLA_SPEED_WPM, MBROLA_PITCH = (100, 300), (10, 90)
PICO_SPEED, PICO_PITCH = (60, 160), (70, 140)
# Then the whole clip is played faster or slower by a factor log-uniform over this range (sox
# `speed`): pitch and every formant move together, as for a shorter or longer vocal tract, so each
# engine voice becomes a family of voices.
VOICE_SPEED = (0.88, 1.14)
OTHER_SAMPLE_RATE = 8000  # stored in the telephone band, the band the small preset reads (FSDD is 8 kHz too)

# --- Real speech: the Free Spoken Digit Dataset --------------------------------------------------
# Isolated digits by four real people (../shared/fsdd, CC BY-SA 4.0; see data/README.md). One
# speaker is held out entirely for test; of the other three, recordings with index
# FSDD_VALIDATION_INDICES (5 of each digit per speaker) are validation, the rest train. lucas is
# held out because his accent (German) is shared by yweweler in training: the test then measures
# a new person rather than a new accent, and jackson, the one US speaker, stays in training.
FSDD_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "fsdd")  # beside the repository
FSDD_TEST_SPEAKERS = ("lucas",)
FSDD_VALIDATION_INDICES = range(45, 50)

# --- Audio ------------------------------------------------------------------
SAMPLE_RATE = 16000  # the recognizer's input rate; espeak-ng renders 22050 Hz
# Leading/trailing audio quieter than this (relative to the clip's peak) is
# silence to trim; espeak-ng pads ~0.3 s of silence after each utterance.
TRIM_THRESHOLD_DB = -50.0
# Silence kept before the first and after the last audible sample, so that
# onsets and decays are not clipped. 50 ms rather than 75 ms saves ~0.5% of the
# FLAC bytes (two more training clips) and is still ample.
TRIM_MARGIN_S = 0.05

# Significant bits kept per sample (default of --bits). Samples are rounded to
# multiples of 2**(16 - BITS) with TPDF dither, so the error is benign white
# noise (RMS 2**(16 - BITS) / 2) instead of signal-correlated distortion; the
# FLAC encoder then drops the constant zero low bits. The choice is the
# fewest bits that keep every clip's quantization SNR (clip RMS over error RMS,
# whole clip including margins) >= 45 dB. Measured on all 470 default clips,
# with FLAC bytes relative to lossless 16-bit:
#   12 bits: SNR min 46.2, mean 52.5 dB; 64% of the bytes   <- chosen
#   11 bits: SNR min 40.1, mean 46.5 dB; 56% (mean passes, quiet clips do not)
#   10 bits: SNR min 34.1, mean 40.4 dB; 48%
# Peak-normalizing each clip to -3 dBFS before quantizing was tried and not
# kept: it raised the minimum SNR by only ~2 dB (11 bits: 42.0 dB, still
# short of 45), because the worst clips are quiet in RMS but not in peak (high
# crest factor), and it cost ~1% more bytes at equal bits.
BITS = 12

# How each split's espeak-ng clips are stored. MP3 at libsndfile's compression level 0.9 (LAME VBR,
# ~33 kbit/s for 16 kHz speech) measured on 60 training clips: 2.9x fewer bytes than the 12-bit
# FLAC, spectral energy kept within 1% below 4 kHz, 3% at 4-6 kHz and 91% at 6-8 kHz, decoding in
# under 1 ms a clip. Opus at a like size lost half the 6-8 kHz band, Vorbis was 2.5x. Lossy is
# for training only: the clips that measure stay exact.
SPLIT_FORMATS = {"train": "mp3", "validation": "flac", "test": "flac"}
MP3_COMPRESSION = 0.9

# espeak-ng clips per split (in generation order; the index seeds each split's random stream).
# Sized so that data/ stays under its 30 MB budget with the FSDD recordings (5.3 MB) and the other
# engines' clips (5.2 MB): a 12-bit FLAC espeak-ng clip costs ~12.7 kB per second of speech, an
# MP3 one ~4.1 kB (an 8 kHz MP3 of another engine ~3.0 kB).
# Validation and test hold about 270 and 400 digits, enough for a digit error rate good to
# about a point.
SPLIT_COUNTS = {"train": 2150, "validation": 70, "test": 100}


def check_tools(other=True):
    """Exit with a one-line hint if espeak-ng, sox or (with `other`) an OTHER_TOOLS engine is not installed."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"error: `{tool}` not found; install it with `apt-get install {tool}`")
    if not other:
        return
    missing = [tool for tool in OTHER_TOOLS if shutil.which(tool) is None]
    missing += [f"mbrola-{v}" for v in MBROLA_VOICES if not os.path.isdir(f"/usr/share/mbrola/{v.removesuffix('-en')}")]
    if missing:
        sys.exit(f"error: the other synthesizers are missing ({', '.join(missing)}); with Debian's "
                 f"contrib and non-free sections enabled: `apt-get install {OTHER_PACKAGES}`")


def check_voices():
    """Exit unless every LANGUAGES x VARIANTS voice really is a distinct voice.

    espeak-ng does not report an unusable variant: it silently speaks with the
    plain language voice instead (unknown name, or a language alias that drops
    the suffix), which would quietly merge held-out and training speakers. So
    each "<language>+<variant>" must sound different from "<language>" alone.
    """
    def speak(voice):
        result = subprocess.run(["espeak-ng", "-v", voice, "--stdout", "zero"], capture_output=True)
        if result.returncode != 0:
            sys.exit(f"error: espeak-ng cannot speak with voice {voice!r}: {result.stderr.decode().strip()}")
        return result.stdout

    for language in LANGUAGES:
        plain = speak(language)
        ignored = [v for v in VARIANTS if speak(f"{language}+{v}") == plain]
        if ignored:
            sys.exit(f"error: espeak-ng ignores variants {ignored} for {language!r}; edit LANGUAGES/VARIANTS")


def synthesize(text, voice, speed, pitch, word_gap, ssml=False):
    """Speak `text` with espeak-ng and return 16 kHz mono int16 samples.

    `ssml`: read `text` as SSML markup (espeak-ng -m; plain text is spoken the same either way).

    espeak-ng writes a 22050 Hz WAV to stdout; sox resamples it with its
    band-limited "very high quality" rate effect. -G lowers the gain just
    enough to stop resampler overshoot from clipping (some voices peak near
    full scale); -D disables dither so that output is deterministic and
    espeak-ng's digital silence stays exactly zero.
    """
    wav = subprocess.run(
        ["espeak-ng", *(["-m"] if ssml else []), "-v", voice, "-s", str(speed), "-p", str(pitch), "-g", str(word_gap),
         "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    raw = subprocess.run(
        ["sox", "-D", "-G", "-t", "wav", "-", "-t", "raw", "-e", "signed-integer", "-b", "16",
         "-c", "1", "-", "rate", "-v", str(SAMPLE_RATE)],
        input=wav,
        capture_output=True,
        check=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2")


def synthesize_other(text, voice, speed, pitch, voice_speed):
    """Speak `text` with one of OTHER_VOICES and return OTHER_SAMPLE_RATE mono int16 samples.

    `speed` and `pitch` are on the engine's own scale (see MBROLA_SPEED_WPM etc.). sox then plays
    the clip `voice_speed` times faster (formants and pitch move together) and resamples it with
    its band-limited rate effect; -G and -D as in `synthesize`.
    """
    source, name = OTHER_VOICES[voice]
    with tempfile.TemporaryDirectory() as folder:
        wav = os.path.join(folder, "clip.wav")
        if source == "mbrola":
            command = ["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", wav, text]
        else:
            command = ["pico2wave", "-l", name, "-w", wav,
                       f'<speed level="{speed}"><pitch level="{pitch}">{text}</pitch></speed>']
        subprocess.run(command, capture_output=True, check=True)
        raw = subprocess.run(
            ["sox", "-D", "-G", wav, "-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-",
             "speed", f"{voice_speed:.4f}", "rate", "-v", str(OTHER_SAMPLE_RATE)],
            capture_output=True,
            check=True,
        ).stdout
    return np.frombuffer(raw, dtype="<i2")


def trim_silence(audio, sample_rate=SAMPLE_RATE):
    """Cut leading/trailing silence from `audio` (at `sample_rate`), leaving TRIM_MARGIN_S each side.

    espeak-ng starts speaking within ~10 ms, so the leading margin is usually
    completed with zeros (digital silence, like espeak-ng's own).
    """
    magnitude = np.abs(audio.astype(np.int32))
    peak = magnitude.max()
    if peak == 0:
        raise RuntimeError("the synthesizer produced a silent clip")
    audible = np.flatnonzero(magnitude > peak * 10 ** (TRIM_THRESHOLD_DB / 20))
    start, end = audible[0], audible[-1] + 1
    margin = round(TRIM_MARGIN_S * sample_rate)
    clip = audio[max(start - margin, 0) : end + margin]
    return np.pad(clip, (max(margin - start, 0), max(end + margin - len(audio), 0)))


def quantize(audio, bits, rng):
    """Round int16 `audio` to `bits` significant bits, with TPDF dither.

    Samples become multiples of step = 2**(16 - bits). Triangular dither of
    +-1 step (difference of two uniforms from `rng`) is added before rounding,
    making the error signal-independent noise. Exact zeros (espeak-ng's digital
    silence and the trim padding) stay exactly zero: they carry no signal to
    quantize, and undithered silence compresses to almost nothing.
    """
    if bits >= 16:
        return audio
    step = 2 ** (16 - bits)
    dither = (rng.random(len(audio)) - rng.random(len(audio))) * step
    quantized = np.round((audio + dither) / step) * step
    quantized = np.clip(quantized, -32768, 32768 - step)  # largest multiple of step in int16
    quantized[audio == 0] = 0
    return quantized.astype(np.int16)


def draw_digits(rng, num_digits=NUM_DIGITS):
    """A transcription of digit words ("three one four"), its length uniform over `num_digits` (inclusive)."""
    count = rng.integers(num_digits[0], num_digits[1] + 1)
    return " ".join(DIGIT_WORDS[d] for d in rng.integers(0, len(DIGIT_WORDS), size=count))


def log_uniform(rng, low, high):
    """A draw whose logarithm is uniform: equal shares of the range's slow and fast halves (by ratio)."""
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def draw_utterances(rng, count, variants, num_digits=NUM_DIGITS):
    """Draw `count` random (transcription, voice, speed, pitch, word gap) tuples.

    The voice is an espeak-ng "<language>+<variant>" name with the accent from
    LANGUAGES and the variant from `variants`; the digit count is uniform over
    `num_digits` (inclusive), speed log-uniform (equal shares of slow and fast
    speech), pitch and word gap uniform.
    """
    utterances = []
    for _ in range(count):
        text = draw_digits(rng, num_digits)
        voice = f"{rng.choice(LANGUAGES)}+{rng.choice(variants)}"
        speed = int(round(log_uniform(rng, *SPEED_WPM)))
        pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
        word_gap = int(rng.integers(WORD_GAP[0], WORD_GAP[1] + 1))
        utterances.append((text, voice, speed, pitch, word_gap))
    return utterances


def draw_other_utterances(rng, count, voices):
    """Draw `count` random (transcription, voice, speed, pitch, voice speed) tuples for OTHER_VOICES.

    Digits as in `draw_utterances`; the voice uniform over `voices`; speed and pitch uniform on the
    engine's scale (MBROLA's words per minute log-uniform); the voice speed log-uniform.
    """
    ranges = {"mbrola": (MBROLA_SPEED_WPM, MBROLA_PITCH), "pico": (PICO_SPEED, PICO_PITCH)}
    utterances = []
    for _ in range(count):
        text = draw_digits(rng)
        voice = str(rng.choice(voices))
        (speed_low, speed_high), (pitch_low, pitch_high) = ranges[OTHER_VOICES[voice][0]]
        if OTHER_VOICES[voice][0] == "mbrola":
            speed = int(round(log_uniform(rng, speed_low, speed_high)))
        else:
            speed = int(rng.integers(speed_low, speed_high + 1))
        pitch = int(rng.integers(pitch_low, pitch_high + 1))
        voice_speed = log_uniform(rng, *VOICE_SPEED)
        utterances.append((text, voice, speed, pitch, voice_speed))
    return utterances


def fsdd_split(speaker, index):
    """The split of FSDD recording `index` of `speaker` (see FSDD_TEST_SPEAKERS)."""
    if speaker in FSDD_TEST_SPEAKERS:
        return "test"
    return "validation" if index in FSDD_VALIDATION_INDICES else "train"


def copy_fsdd(fsdd_dir, out):
    """Copy the FSDD recordings into `out` at their own 8 kHz; return their metadata rows.

    Validation and test recordings stay exact (lossless 16-bit FLAC: only the container changes);
    training ones are MP3 as the other training clips are (half the bytes of the FLAC, which pays for
    the other synthesizers' clips). CC BY-SA 4.0 allows both with credit (data/README.md).
    """
    rows = []
    with open(os.path.join(fsdd_dir, "metadata.csv"), newline="") as f:
        for record in csv.DictReader(f):
            speaker, index = record["speaker"], int(record["index"])
            split = fsdd_split(speaker, index)
            audio, sample_rate = sf.read(os.path.join(fsdd_dir, record["file_name"]), dtype="int16")
            file_name = f"{split}/fsdd-{speaker}-{record['transcription']}-{index:02d}.{SPLIT_FORMATS[split]}"
            write_clip(os.path.join(out, file_name), audio, SPLIT_FORMATS[split], bits=16, sample_rate=sample_rate)
            rows.append((file_name, record["transcription"], split, "fsdd", speaker))
    return rows


def write_clip(path, audio, fmt, bits=BITS, dither_rng=None, sample_rate=SAMPLE_RATE):
    """Write one clip: MP3 (training), or FLAC quantized to `bits` with TPDF dither from `dither_rng`."""
    if fmt == "mp3":
        sf.write(path, audio, sample_rate, format="MP3", subtype="MPEG_LAYER_III", compression_level=MP3_COMPRESSION)
    else:
        sf.write(path, quantize(audio, bits, dither_rng), sample_rate, subtype="PCM_16", format="FLAC", compression_level=1.0)


def write_utterances(out, folder, utterances, fmt, bits, seed, stream, split):
    """Synthesize, trim and write `utterances` as `folder`/NNNNNN.`fmt` under `out`; return their metadata rows.

    Each clip's dither has its own stream (a spawned child of the (seed, stream) sequence), so it
    does not depend on how many clips are written.
    """
    rows = []
    for index, (text, voice, speed, pitch, word_gap) in enumerate(utterances):
        audio = trim_silence(synthesize(text, voice, speed, pitch, word_gap))
        file_name = os.path.join(folder, f"{index:06d}.{fmt}")
        dither_rng = np.random.default_rng(np.random.SeedSequence([seed, stream], spawn_key=(index,)))
        write_clip(os.path.join(out, file_name), audio, fmt, bits, dither_rng)
        rows.append((file_name, text, split, "espeak-ng", voice))
    return rows


def write_other_utterances(out, split, utterances, bits, seed):
    """Synthesize, trim and write `utterances` of OTHER_VOICES as `split`/other-NNNNNN.EXT; return their metadata rows.

    Stored at OTHER_SAMPLE_RATE in the split's format (see SPLIT_FORMATS); dither as in `write_utterances`.
    """
    rows, fmt, stream = [], SPLIT_FORMATS[split], OTHER_STREAMS[split]
    for index, (text, voice, speed, pitch, voice_speed) in enumerate(utterances):
        audio = trim_silence(synthesize_other(text, voice, speed, pitch, voice_speed), OTHER_SAMPLE_RATE)
        file_name = os.path.join(split, f"other-{index:06d}.{fmt}")
        dither_rng = np.random.default_rng(np.random.SeedSequence([seed, stream], spawn_key=(index,)))
        write_clip(os.path.join(out, file_name), audio, fmt, bits, dither_rng, OTHER_SAMPLE_RATE)
        rows.append((file_name, text, split, OTHER_VOICES[voice][0], voice))
    return rows


def write_metadata(out, rows):
    """`out`/metadata.csv: file_name,transcription,split,source,speaker, one line per clip."""
    with open(os.path.join(out, "metadata.csv"), "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("file_name", "transcription", "split", "source", "speaker"))
        writer.writerows(rows)


def write_long(out, count, seed, bits):
    """The length-generalization set: `count` strings of LONG_DIGITS digits in the test split's voices, as FLAC.

    Made the way the test split is (same variants, accents, speed, pitch and gap ranges, trimming and
    12-bit FLAC), from a random stream of its own, so the corpus's splits are untouched.
    """
    utterances = draw_utterances(np.random.default_rng([seed, LONG_STREAM]), count, TEST_VARIANTS, LONG_DIGITS)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    rows = write_utterances(out, "", utterances, "flac", bits, seed, LONG_STREAM, "test")
    write_metadata(out, rows)
    print(f"wrote {len(rows)} strings of {LONG_DIGITS[0]}-{LONG_DIGITS[1]} digits to {out}/")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data", help="output folder (default: data)")
    parser.add_argument("--fsdd", default=FSDD_DIR, help=f"the FSDD folder (default: {FSDD_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--bits", type=int, default=BITS, choices=range(8, 17), metavar="{8..16}",
                        help=f"significant bits per sample of the FLAC clips, 16 = lossless (default: {BITS}; "
                             "see BITS for why)")
    for split, count in SPLIT_COUNTS.items():
        parser.add_argument(f"--{split}", type=int, default=count,
                            help=f"number of espeak-ng {split} clips (default: {count})")
    parser.add_argument("--long", type=int, default=0, metavar="N",
                        help="instead of the corpus, write N test-voice strings of "
                             f"{LONG_DIGITS[0]}-{LONG_DIGITS[1]} digits to OUT/ (FLAC, with its own metadata.csv, split test): "
                             "the length-generalization set, longer than any training string")
    args = parser.parse_args()

    check_tools(other=not args.long)
    if args.long:
        check_voices()
        write_long(args.out, args.long, args.seed, args.bits)
        return
    if not os.path.isfile(os.path.join(args.fsdd, "metadata.csv")):
        sys.exit(f"error: no FSDD metadata.csv in {args.fsdd}; pass --fsdd")
    check_voices()

    rows = []
    for split_index, split in enumerate(SPLIT_COUNTS):
        rng = np.random.default_rng([args.seed, split_index])
        utterances = draw_utterances(rng, getattr(args, split), SPLIT_VARIANTS[split])
        split_dir = os.path.join(args.out, split)
        shutil.rmtree(split_dir, ignore_errors=True)  # no stale clips from a bigger run
        os.makedirs(split_dir)
        rows += write_utterances(args.out, split, utterances, SPLIT_FORMATS[split], args.bits, args.seed, split_index, split)
        print(f"{split}: {len(utterances)} espeak-ng clips")
    for split, count in OTHER_COUNTS.items():
        rng = np.random.default_rng([args.seed, OTHER_STREAMS[split]])
        other_rows = write_other_utterances(args.out, split, draw_other_utterances(rng, count, OTHER_SPLIT_VOICES[split]),
                                            args.bits, args.seed)
        print(f"{split}: {len(other_rows)} clips of other synthesizers")
        rows += other_rows
    fsdd_rows = copy_fsdd(args.fsdd, args.out)
    print(f"fsdd: {len(fsdd_rows)} recordings")
    rows += fsdd_rows

    write_metadata(args.out, rows)

    total = sum(os.path.getsize(os.path.join(args.out, name)) for name, *_ in rows)
    print(f"wrote {len(rows)} clips, {total / 1e6:.2f} MB of audio, to {args.out}/")


if __name__ == "__main__":
    main()
