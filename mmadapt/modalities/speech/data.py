"""Speech data: audiofolder splits (``metadata.jsonl`` with ``file_name``, ``transcription``)
and a vocabulary of domain terms (one per line)."""

from __future__ import annotations

import json
from pathlib import Path

from mmadapt.errors import DataError
from mmadapt.protocols import Example

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def read_audiofolder(folder: Path, split: str) -> list[Example]:
    """Examples of an audiofolder split; every bad line is reported at once, with its number."""
    if not folder.is_dir():
        raise DataError(
            "an audio split is a folder with metadata.jsonl", path=folder, fix="point data.train / data.eval at the folder"
        )
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise DataError(
            "metadata.jsonl is missing", path=folder, fix="add metadata.jsonl with file_name and transcription per line"
        )
    examples, problems, seen = [], [], set()
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append(f"line {number}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: expected an object")
            continue
        name, text = record.get("file_name"), record.get("transcription")
        if not isinstance(name, str) or not name:
            problems.append(f"line {number}: 'file_name' must be a non-empty string")
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(f"line {number}: empty transcription for {name}")
            continue
        audio = (folder / name).resolve()
        if folder.resolve() not in audio.parents:
            problems.append(f"line {number}: {name} points outside the split folder")
            continue
        if not audio.is_file():
            problems.append(f"line {number}: {name} does not exist")
            continue
        if name in seen:
            problems.append(f"line {number}: duplicate file_name {name}")
            continue
        unreadable = _unreadable(audio)
        if unreadable:
            problems.append(f"line {number}: {name}: {unreadable}")
            continue
        seen.add(name)
        terms = record.get("terms") or []
        extra = {k: v for k, v in record.items() if k not in ("file_name", "transcription", "terms")}
        examples.append(Example(f"{split}/{name}", str(audio), text.strip(), {"terms": list(terms), **extra}))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(shown, path=meta, fix="each line needs file_name (a readable audio file in the folder) and transcription")
    if not examples:
        raise DataError("no utterances", path=meta, fix="add lines with file_name and transcription")
    return examples


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be decoded (None if it can): checked when the split is read, so a broken
    eval file stops a run before any training, not after it. The header is enough where soundfile
    reads it; other formats are decoded once."""
    import soundfile as sf

    from mmadapt.modalities.speech.audio import load_audio

    try:
        info = sf.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return None
    except Exception:  # noqa: BLE001 - no soundfile header: let the loader decide
        pass
    try:
        load_audio(path)
    except DataError as exc:
        return exc.message
    return None


def read_vocabulary(path: Path) -> list[str]:
    """Domain terms, one per line (blank lines and # comments skipped, duplicates dropped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the vocabulary ({exc})", path=path, fix="a UTF-8 text file, one term per line") from None
    terms: list[str] = []
    for line in lines:
        term = line.split("#", 1)[0].strip()
        if term and term not in terms:
            terms.append(term)
    if not terms:
        raise DataError("the vocabulary is empty", path=path, fix="one domain term per line")
    return terms
