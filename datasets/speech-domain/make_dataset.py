"""Write the speech-domain dataset: synthetic speech full of invented domain terms.

Speech comes from espeak-ng (real synthesis, several voices and rates), then torchaudio
adds speed perturbation and noise; train and eval differ in sentences, voices, rates,
noise type and level, and eight terms are spoken in eval only. Output (audiofolder
convention, 16 kHz mono 16-bit WAV)::

    train/metadata.jsonl  train/*.wav     ~120 clips
    eval/metadata.jsonl   eval/*.wav      ~40 clips
    plain/metadata.jsonl  plain/*.wav     20 plain English sentences (no domain terms)
    vocabulary.txt                         the 40 domain terms
    vocabulary-300.txt                     with --vocabulary-300: the 40 terms + 260 distractors

Each metadata line: {"file_name", "transcription", "terms", "voice", "rate", "speed", "snr_db"}.

    python datasets/speech-domain/make_dataset.py                   # everything (needs espeak-ng)
    python datasets/speech-domain/make_dataset.py --vocabulary-300  # also the 300-term list

Deterministic for a given espeak-ng build: fixed seed, sorted choices.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

SEED = 1234
RATE = 16_000
HERE = Path(__file__).resolve().parent

# (term, how espeak-ng is told to say it, category). Invented names, codes and jargon.
TERMS: list[tuple[str, str, str]] = [
    ("Zentrix", "Zentrix", "product"),
    ("Kubelyn", "Kubelyn", "product"),
    ("Vextora", "Vextora", "product"),
    ("Quorbit", "Quorbit", "product"),
    ("Halvix", "Halvix", "product"),
    ("Draxel", "Draxel", "product"),
    ("Tavrin", "Tavrin", "product"),
    ("Nimbrel", "Nimbrel", "product"),
    ("Corvanta", "Corvanta", "product"),
    ("Frennik", "Frennik", "product"),
    ("Olvani", "Olvani", "product"),
    ("Brisqo", "Brisko", "product"),
    ("Jexaline", "Jexaline", "product"),
    ("Murvex", "Murvex", "product"),
    ("Pellatron", "Pellatron", "product"),
    ("Synkora", "Synkora", "product"),
    ("QPX-9", "Q P X nine", "code"),
    ("ZRT-4", "Z R T four", "code"),
    ("HLX-12", "H L X twelve", "code"),
    ("KVN-7", "K V N seven", "code"),
    ("TQL", "T Q L", "code"),
    ("DRBX", "D R B X", "code"),
    ("p99", "P ninety-nine", "jargon"),
    ("VQ-200", "V Q two hundred", "code"),
    ("flarn cache", "flarn cache", "jargon"),
    ("grobble queue", "grobble queue", "jargon"),
    ("snorvel index", "snorvel index", "jargon"),
    ("quiblet shard", "quiblet shard", "jargon"),
    ("drenning window", "drenning window", "jargon"),
    ("plorb sync", "plorb sync", "jargon"),
    ("vantle lease", "vantle lease", "jargon"),
    ("brindle log", "brindle log", "jargon"),
    ("thrumble mode", "thrumble mode", "jargon"),
    ("skelp buffer", "skelp buffer", "jargon"),
    ("wuzzle check", "wuzzle check", "jargon"),
    ("crenfold", "crenfold", "jargon"),
    ("yarrowing", "yarrowing", "jargon"),
    ("mobbling", "mobbling", "jargon"),
    ("frizzet", "frizzet", "jargon"),
    ("glimmerstat", "glimmerstat", "jargon"),
]
# Spoken in eval only: no train sentence holds them.
EVAL_ONLY = {"Pellatron", "Synkora", "VQ-200", "DRBX", "skelp buffer", "wuzzle check", "glimmerstat", "frizzet"}

# {product} {code} {jargon}: a term of that category. Train and eval templates never share a sentence.
TRAIN_TEMPLATES = [
    "Restart {product} before the {jargon} fills.",
    "The {code} node has a slow {jargon}.",
    "We moved {product} to {code}.",
    "Check the {jargon} on {product}.",
    "{product} lost its {jargon} last night.",
    "Upgrade {product} to the {code} build.",
    "The {jargon} times out on {code}.",
    "We tested {product} against {product}.",
    "Pause the {jargon} while {product} syncs.",
    "{code} errors are showing in {product}.",
    "Who changed the {jargon} settings?",
    "{product} needs a bigger {jargon}.",
    "Send the {code} logs to {product}.",
    "The {jargon} is healthy again.",
    "Roll back {product} if {code} fails.",
    "{product} handles the {jargon} better.",
]
EVAL_TEMPLATES = [
    "Can {product} read from the {jargon} directly?",
    "Our {code} cluster still waits on the {jargon}.",
    "Before lunch, migrate {product} to {code}.",
    "Nobody noticed the {jargon} grow.",
    "Compare {product} with {product} on the {code} rack.",
    "The {jargon} stalled during the {product} rollout.",
    "Swap the {code} cards, then the {jargon}.",
    "Why does {product} ignore the {jargon} setting?",
]
PLAIN_SENTENCES = [
    "Please send the weekly report to the whole team.",
    "The meeting has been moved to Thursday afternoon.",
    "We need more chairs in the large conference room.",
    "She bought fresh bread and milk on the way home.",
    "The train to the city leaves every twenty minutes.",
    "Remember to water the plants before you go away.",
    "He finished the book in a single evening.",
    "The weather will be sunny and warm tomorrow.",
    "Our new office is close to the central station.",
    "Could you call me back after the lunch break?",
    "The children played in the garden all morning.",
    "Turn left at the second traffic light.",
    "Dinner will be ready in about half an hour.",
    "The printer on the third floor is out of paper.",
    "I would like a cup of coffee with milk, please.",
    "The museum is closed on Mondays and holidays.",
    "They painted the kitchen a bright yellow color.",
    "My brother works as a doctor in a small town.",
    "The store opens at nine in the morning.",
    "We walked along the river until it got dark.",
]

TRAIN_VOICES = ["en-us+m3", "en-us+f2", "en-gb+f3", "en-029+m1", "en-gb-scotland+f2"]
EVAL_VOICES = ["en-us+f3", "en-gb-x-rp+m3", "en-us+m1", "en-gb-x-rp+f4"]
PLAIN_VOICES = ["en-us+f3", "en-us+m3", "en-us+f2", "en-gb-x-rp+f3"]
TRAIN_RATES = [175, 185, 195]
EVAL_RATES = [150, 160, 170]
N_TRAIN, N_EVAL = 120, 40


def espeak(text: str, voice: str, rate: int, pitch: int, gap: int) -> tuple[np.ndarray, int]:
    """espeak-ng speech; ``gap`` is the pause between words in units of 10 ms (makes words far clearer)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-g", str(gap), "-w", str(wav), text]
        subprocess.run(cmd, check=True, capture_output=True)
        audio, sr = sf.read(wav, dtype="float32")
    return audio, int(sr)


def trim_silence(x: np.ndarray, rate: int, pad: float = 0.02, threshold: float = 0.01) -> np.ndarray:
    loud = np.flatnonzero(np.abs(x) > threshold)
    if loud.size == 0:
        return x
    p = int(pad * rate)
    return x[max(0, loud[0] - p) : loud[-1] + p]


def coloured_noise(n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """White, pink (1/f) or brown (1/f^2) noise, unit variance."""
    white = torch.randn(n, generator=gen)
    if kind == "white":
        return white
    spectrum = torch.fft.rfft(white)
    f = torch.arange(spectrum.numel(), dtype=torch.float32).clamp(min=1.0)
    spectrum = spectrum / (f.sqrt() if kind == "pink" else f)
    noise = torch.fft.irfft(spectrum, n=n)
    return noise / noise.std()


def render(
    spoken: str, voice: str, rate: int, pitch: int, gap: int, speed: float, noise: str, snr_db: float, gen: torch.Generator
) -> np.ndarray:
    audio, sr = espeak(spoken, voice, rate, pitch, gap)
    audio = trim_silence(audio, sr)
    wave = AF.resample(torch.from_numpy(audio), sr, RATE)
    if speed != 1.0:  # Kaldi-style speed perturbation: tempo and pitch together
        wave, _ = AF.speed(wave.unsqueeze(0), RATE, speed)
        wave = wave[0]
    n = coloured_noise(wave.numel(), noise, gen)
    wave = AF.add_noise(wave.unsqueeze(0), n.unsqueeze(0), torch.tensor([snr_db]))[0]
    wave = wave / wave.abs().max().clamp(min=1e-6) * 0.8
    return wave.numpy()


def fill(
    template: str, pool: dict[str, list[tuple[str, str]]], rng: random.Random, must: tuple[str, str, str] | None
) -> tuple[str, str, list[str]]:
    """Fill a template's slots; ``must`` (a term) takes the first slot of its category."""
    text, spoken, used = template, template, []
    while "{" in text:
        start = text.index("{")
        cat = text[start + 1 : text.index("}", start)]
        if must is not None and must[2] == cat and must[0] not in used:
            term, say = must[0], must[1]
        else:
            choices = [t for t in pool[cat] if t[0] not in used]
            term, say = rng.choice(choices)
        used.append(term)
        text = text.replace("{" + cat + "}", term, 1)
        spoken = spoken.replace("{" + cat + "}", say, 1)
    return text, spoken, used


def make_split(
    name: str,
    templates: list[str],
    n: int,
    allowed: list[tuple[str, str, str]],
    voices: list[str],
    rates: list[int],
    speeds: list[float],
    gaps: list[int],
    noise: str,
    snr: tuple[float, float],
    rng: random.Random,
    gen: torch.Generator,
    required: list[tuple[str, str, str]],
) -> None:
    out = HERE / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pool: dict[str, list[tuple[str, str]]] = {}
    for term, say, cat in allowed:
        pool.setdefault(cat, []).append((term, say))
    # every allowed term at least once (round robin over the required list), then random terms
    usable = [t for t in required if any("{" + t[2] + "}" in tp for tp in templates)]
    seen: set[str] = set()
    rows = []
    for i in range(n):
        must = usable[i % len(usable)] if i < len(usable) else None
        candidates = [tp for tp in templates if must is None or "{" + must[2] + "}" in tp]
        for _ in range(50):
            template = rng.choice(candidates)
            text, spoken, used = fill(template, pool, rng, must)
            if text not in seen:
                break
        seen.add(text)
        voice, rate = rng.choice(voices), rng.choice(rates)
        speed, snr_db = rng.choice(speeds), round(rng.uniform(*snr), 1)
        gap = rng.choice(gaps)
        wave = render(spoken, voice, rate, rng.choice([40, 50, 60]), gap, speed, noise, snr_db, gen)
        file_name = f"{name}-{i:03d}.wav"
        sf.write(out / file_name, wave, RATE, subtype="PCM_16")
        rows.append(
            {
                "file_name": file_name,
                "transcription": text,
                "terms": used,
                "voice": voice,
                "rate": rate,
                "gap": gap,
                "speed": speed,
                "noise": noise,
                "snr_db": snr_db,
            }
        )
    if name == "train":
        leaked = {t for r in rows for t in r["terms"]} & EVAL_ONLY
        assert not leaked, f"eval-only terms in train: {leaked}"
    (out / "metadata.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    seconds = sum(sf.info(out / r["file_name"]).duration for r in rows)
    print(f"{name}: {len(rows)} clips, {seconds:.0f} s of audio")


def make_plain(rng: random.Random, gen: torch.Generator) -> None:
    out = HERE / "plain"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows = []
    for i, text in enumerate(PLAIN_SENTENCES):
        voice = PLAIN_VOICES[i % len(PLAIN_VOICES)]
        wave = render(text, voice, 145, 50, 3, 1.0, "white", 40.0, gen)
        file_name = f"plain-{i:03d}.wav"
        sf.write(out / file_name, wave, RATE, subtype="PCM_16")
        rows.append(
            {
                "file_name": file_name,
                "transcription": text,
                "terms": [],
                "voice": voice,
                "rate": 145,
                "gap": 3,
                "speed": 1.0,
                "noise": "white",
                "snr_db": 40.0,
            }
        )
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"plain: {len(rows)} clips")


# ---- 260 distractor terms: invented names, codes and jargon in the same styles as the real ones
_ONSETS = [
    "b",
    "br",
    "c",
    "cr",
    "d",
    "dr",
    "f",
    "fl",
    "g",
    "gr",
    "h",
    "j",
    "k",
    "kl",
    "l",
    "m",
    "n",
    "p",
    "pl",
    "qu",
    "r",
    "s",
    "sk",
    "st",
    "t",
    "tr",
    "v",
    "vr",
    "w",
    "z",
]
_VOWELS = ["a", "e", "i", "o", "u", "y", "ai", "ou"]
_CODAS = ["", "n", "x", "r", "l", "m", "s", "th", "nd", "rk", "v"]
_ENDINGS = ["ix", "ora", "lyn", "tron", "ex", "ani", "vik", "ra", "enta", "ic", "bit", "qo", "on", "el"]
_NOUNS = [
    "cache",
    "queue",
    "index",
    "shard",
    "window",
    "sync",
    "lease",
    "log",
    "mode",
    "buffer",
    "check",
    "relay",
    "ledger",
    "pool",
    "gate",
    "map",
    "stream",
    "vault",
    "hook",
    "mesh",
]


def distractors(real: list[str], n: int, seed: int = SEED) -> list[str]:
    rng = random.Random(seed + 300)
    taken = {t.lower() for t in real}
    out: list[str] = []

    def add(term: str) -> None:
        if term.lower() not in taken:
            taken.add(term.lower())
            out.append(term)

    def syllable() -> str:
        return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)

    while len(out) < n:
        kind = len(out) % 5
        if kind in (0, 1):
            add((syllable() + rng.choice(_ENDINGS)).capitalize())
        elif kind == 2:
            letters = "".join(rng.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(rng.choice([2, 3, 3, 4])))
            add(
                letters
                + ("-" + str(rng.choice([2, 3, 4, 5, 7, 8, 9, 10, 12, 16, 20, 40, 64, 100])) if rng.random() < 0.7 else "")
            )
        else:
            add(f"{syllable()}{rng.choice(['le', 'et', 'en', 'ing', 'ow'])} {rng.choice(_NOUNS)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vocabulary-300", action="store_true", help="also write vocabulary-300.txt (40 terms + 260 distractors)"
    )
    parser.add_argument("--vocabulary-only", action="store_true", help="write the vocabulary files only (no audio)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    real = [t for t, _, _ in TERMS]
    assert len(real) == len(set(real)) == 40 and EVAL_ONLY <= set(real)
    (HERE / "vocabulary.txt").write_text("\n".join(real) + "\n")
    if args.vocabulary_300 or args.vocabulary_only:
        extra = distractors(real, 260)
        (HERE / "vocabulary-300.txt").write_text("\n".join(real + extra) + "\n")
        print("vocabulary-300.txt: 300 terms")
    if args.vocabulary_only:
        return 0
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed: apt-get install -y espeak-ng", file=sys.stderr)
        return 2

    def seeded(offset: int) -> tuple[random.Random, torch.Generator]:  # each split its own stream: one split's change
        return random.Random(SEED + offset), torch.Generator().manual_seed(SEED + offset)  # leaves the others as they are

    train_terms = [t for t in TERMS if t[0] not in EVAL_ONLY]
    eval_required = [t for t in TERMS if t[0] in EVAL_ONLY] + [t for t in TERMS if t[0] not in EVAL_ONLY]
    make_split(
        "train",
        TRAIN_TEMPLATES,
        N_TRAIN,
        train_terms,
        TRAIN_VOICES,
        TRAIN_RATES,
        [1.0, 1.1, 1.2],
        [1, 2, 3],
        "white",
        (26.0, 36.0),
        *seeded(0),
        train_terms,
    )
    make_split(
        "eval",
        EVAL_TEMPLATES,
        N_EVAL,
        TERMS,
        EVAL_VOICES,
        EVAL_RATES,
        [0.95, 1.0],
        [2, 3],
        "pink",
        (22.0, 30.0),
        *seeded(1),
        eval_required,
    )
    make_plain(*seeded(2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
