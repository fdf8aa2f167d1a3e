"""Speech data: audiofolder splits (``metadata.jsonl`` with ``file_name``, ``transcription``)
and a vocabulary of domain terms (one per line).

One parser per format (:func:`parse_audiofolder`, :func:`parse_vocabulary`) walks a file once,
adds every problem to a list (with its line) and returns what it could build;
:func:`read_data` runs them over a recipe's data, and both :func:`load_data` (raise on the
first errors) and :func:`validate_data` (report them all) use it, so a run and
``mmadapt data validate`` apply the same rules.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from mmadapt.engine import validate as v
from mmadapt.errors import DataError
from mmadapt.modalities.speech.metrics import term_pattern
from mmadapt.protocols import DataBundle, Example

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def _header(path: Path):
    """The soundfile header of ``path`` (frames, rate, channels), or None where soundfile reads none."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - no soundfile header: load_audio decides
        return None
    return info if info.frames > 0 and info.samplerate > 0 else None


def parse_audiofolder(
    folder: Path,
    split: str,
    problems: list[v.Problem],
    *,
    thorough: bool = False,
    hashes: list[tuple[str, str, int | None]] | None = None,
) -> list[Example]:
    """The utterances of an audiofolder split; every problem goes to ``problems``, at its metadata.jsonl line.

    Errors: no folder, a bad metadata line, an empty transcript, a file outside the folder,
    duplicate file names, audio that is missing, empty or cannot be decoded, a train clip over
    30 s (Whisper trains on one 30 s window). Warnings: a sample rate other than 16 kHz or more
    than one channel (resampled / downmixed on load), an eval clip over 30 s (transcribed window
    by window). Every clip is checked when the split is read, so a broken eval clip stops a run
    before any training: from its header where soundfile reads one, else decoded once.

    ``thorough=True`` (``validate_data`` only) also decodes every clip in full (NaN or infinite
    samples; a run finds those when the clip is loaded) and adds (sha256, file, line) of each
    clip to ``hashes`` for the train/eval leakage check: both read every byte of every clip,
    which a run does not pay for before it starts.
    """
    from mmadapt.modalities.speech.audio import CHUNK_SECONDS, SAMPLE_RATE, load_audio

    if not folder.is_dir():
        problems.append(
            v.error(folder, None, "an audio split is a folder with metadata.jsonl", "point data.train / data.eval at the folder")
        )
        return []
    meta = folder / "metadata.jsonl"
    examples: list[Example] = []
    names: list[tuple[str, str, int | None]] = []
    for number, record in v.scan_jsonl(meta, problems, what="metadata.jsonl"):
        name, text = record.get("file_name"), record.get("transcription")
        if not isinstance(name, str) or not name:
            problems.append(v.error(meta, number, "'file_name' must be a non-empty string"))
            continue
        names.append((name, str(meta), number))
        usable = True
        if not isinstance(text, str) or not text.strip():
            problems.append(v.error(meta, number, f"empty transcription for {name}", "add what is said in the clip"))
            usable = False
        audio = (folder / name).resolve()
        if folder.resolve() not in audio.parents:
            problems.append(v.error(meta, number, f"{name} points outside the split folder", "keep the audio inside the split folder"))
            continue
        info = _header(audio)
        if info is None or thorough:
            try:
                load_audio(audio)  # missing, empty, undecodable, no samples, NaN
            except DataError as exc:
                problems.append(v.Problem(v.ERROR, str(meta), number, f"{name}: {v.Problem.from_error(exc).message}", exc.fix))
                continue
        if info is not None:  # None: decoded by torchaudio, no soundfile header: no rate/channel checks
            if info.samplerate != SAMPLE_RATE:
                problems.append(v.warning(meta, number, f"{name}: {info.samplerate} Hz, resampled to {SAMPLE_RATE} Hz on load"))
            if info.channels != 1:
                problems.append(v.warning(meta, number, f"{name}: {info.channels} channels, downmixed to mono on load"))
            seconds = info.frames / info.samplerate
            if seconds > CHUNK_SECONDS:
                if split == "train":
                    problems.append(
                        v.error(
                            meta,
                            number,
                            f"{name}: {seconds:.1f} s > {CHUNK_SECONDS:.0f} s: Whisper trains on one 30 s window",
                            "cut it into clips of at most 30 s with their transcripts",
                        )
                    )
                    usable = False
                else:
                    problems.append(v.warning(meta, number, f"{name}: {seconds:.1f} s, transcribed in 30 s windows"))
        if thorough and hashes is not None:
            hashes.append((v.file_sha256(audio), str(meta), number))
        if usable:
            terms = record.get("terms") or []
            extra = {k: val for k, val in record.items() if k not in ("file_name", "transcription", "terms")}
            examples.append(Example(f"{split}/{name}", str(audio), text.strip(), {"terms": list(terms), **extra}))
    problems.extend(v.duplicates(names, "file_name"))
    return examples


def read_audiofolder(folder: Path, split: str) -> list[Example]:
    """The utterances of an audiofolder split; one DataError naming the first bad lines if any (see :func:`parse_audiofolder`)."""
    problems: list[v.Problem] = []
    examples = parse_audiofolder(folder, split, problems)
    v.raise_errors(problems)
    return examples


def parse_vocabulary(path: Path, problems: list[v.Problem]) -> list[str]:
    """Domain terms, one per line (blank lines and # comments skipped, duplicates dropped); an
    unreadable or empty file goes to ``problems``."""
    fix = "a UTF-8 text file, one term per line"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(v.error(path, None, f"cannot read the vocabulary ({exc})", fix))
        return []
    terms: list[str] = []
    for line in lines:
        term = line.split("#", 1)[0].strip()
        if term and term not in terms:
            terms.append(term)
    if not terms:
        problems.append(v.error(path, None, "the vocabulary is empty", "one domain term per line"))
    return terms


def read_vocabulary(path: Path) -> list[str]:
    """The terms of a vocabulary file; one DataError if it is unreadable or empty (see :func:`parse_vocabulary`)."""
    problems: list[v.Problem] = []
    terms = parse_vocabulary(path, problems)
    v.raise_errors(problems)
    return terms


def read_data(recipe: Recipe, *, thorough: bool = False) -> tuple[DataBundle | None, list[v.Problem]]:
    """Parse the recipe's audiofolder splits and vocabulary once: the bundle (None when any problem
    is an error; no fingerprint yet, see :func:`load_data`) and every problem. ``thorough=True``
    adds the validation-only checks of :func:`parse_audiofolder` (full decode, leakage by hash)."""
    d = recipe.data
    problems: list[v.Problem] = []
    hashes: dict[str, list[tuple[str, str, int | None]]] = {"train": [], "eval": []}
    splits = {}
    for split in ("train", "eval"):
        ref = getattr(d, split)
        splits[split] = parse_audiofolder(recipe.path(ref), split, problems, thorough=thorough, hashes=hashes[split]) if ref else []
    problems.extend(v.leakage(hashes["train"], hashes["eval"], "audio (sha256)"))
    vocabulary = parse_vocabulary(recipe.path(d.vocabulary), problems) if d.vocabulary else []
    if v.has_errors(problems):
        return None, problems
    return DataBundle(splits["train"], splits["eval"], {"vocabulary": vocabulary}), problems


def data_paths(recipe: Recipe) -> list[Path]:
    """Every data file or folder the recipe names (what the fingerprint covers)."""
    d = recipe.data
    return [Path(recipe.path(p)) for p in (d.train, d.eval, d.vocabulary) if p]


def load_data(recipe: Recipe) -> DataBundle:
    """The recipe's data, or one DataError for the first errors (warnings do not stop a run)."""
    return v.bundle_or_raise(*read_data(recipe), data_paths(recipe))


def validate_data(recipe: Recipe) -> list[v.Problem]:
    """Every problem of the audiofolder splits and the vocabulary, each with file and line.

    Errors: missing/empty/corrupt audio, zero samples, NaN samples, empty transcripts, duplicate
    file names, audio over 30 s in train (Whisper sees 30 s windows). Warnings: a sample rate other
    than 16 kHz or more than one channel (resampled/downmixed on load), the same audio (by hash)
    in train and eval, eval audio over 30 s (transcribed window by window).
    """
    return read_data(recipe, thorough=True)[1]


def terms_seen(train: list[Example], evaluation: list[Example]) -> list[str]:
    """Per eval clip: ``seen`` when every domain term it holds (its ``terms``) is spoken in some train
    transcript, ``unseen`` when one is not, ``no terms`` for plain speech (the ``terms_seen`` slice)."""
    spoken = "\n".join(e.reference or "" for e in train)
    out = []
    for example in evaluation:
        terms = [t for t in example.meta.get("terms") or [] if t and t.strip()]
        if not terms:
            out.append("no terms")
        else:
            known = all(re.search(term_pattern(t), spoken, re.IGNORECASE) for t in terms)
            out.append("seen" if known else "unseen")
    return out
