"""Audio in: any readable file -> mono float32 at 16 kHz, and 30-second windows for Whisper.

Files are decoded with soundfile (WAV, FLAC, OGG/Vorbis, MP3 with libsndfile >= 1.1) and,
where soundfile cannot read a format, with torchaudio. Stereo is downmixed by averaging
the channels, any sample rate is resampled with ``torchaudio.functional.resample``.
Every problem with a file (missing, empty, corrupt, no samples, non-finite samples) is a
one-line :class:`mmadapt.errors.DataError` that names the file.

Whisper sees at most 30 s at a time; :func:`chunk_audio` cuts longer audio into windows
(optionally overlapping) so a 10-minute recording is transcribed window by window.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmadapt.errors import DataError

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30.0


@dataclass(frozen=True)
class AudioChunk:
    """One window of a longer recording: its samples and where it starts and ends (seconds)."""

    samples: np.ndarray
    start: float
    end: float


def _fix_for(path: Path) -> str:
    return f"replace {path.name} with a readable WAV/FLAC/OGG file (e.g. sox in.any -r 16000 -c 1 {path.stem}.wav)"


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 and the sample rate, via soundfile then torchaudio."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return data, int(rate)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as sf_error:
        first_error = sf_error
    try:  # formats libsndfile does not know (torchaudio may need torchcodec/ffmpeg for them)
        import torchaudio

        waveform, rate = torchaudio.load(str(path))
        return waveform.T.contiguous().numpy().astype(np.float32, copy=False), int(rate)
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"; report soundfile's reason
        reason = str(first_error).rsplit(": ", 1)[-1].strip().rstrip(".") or type(first_error).__name__
        raise DataError(f"cannot decode audio ({reason})", path=path, fix=_fix_for(path)) from first_error


def resample(audio: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal (band-limited sinc interpolation of torchaudio)."""
    if orig_rate == target_rate:
        return audio.astype(np.float32, copy=False)
    if orig_rate <= 0:
        raise ValueError(f"sample rate must be positive, got {orig_rate}")
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig_rate, target_rate)
    return out.numpy()


def to_mono(frames: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array into one float32 channel."""
    if frames.ndim == 1:
        return frames.astype(np.float32, copy=False)
    if frames.shape[1] == 1:
        return frames[:, 0].astype(np.float32, copy=False)
    return frames.mean(axis=1, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``path`` as mono float32 at ``sample_rate`` Hz (default 16 kHz), samples in [-1, 1].

    Raises :class:`DataError` (one line, names the file) when the file is missing, empty,
    not decodable, holds zero samples or holds non-finite samples.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(
            "audio file not found", path=path, fix="check the path in the dataset's metadata (relative to the split folder)"
        )
    if not path.is_file():
        raise DataError("is not a file", path=path, fix="point the dataset at an audio file, not a folder")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"cannot read audio file ({exc.strerror})", path=path, fix="check its permissions") from exc
    if size == 0:
        raise DataError("audio file is empty (0 bytes)", path=path, fix=_fix_for(path))
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise DataError(f"cannot read audio file ({exc.strerror})", path=path, fix="check its permissions") from exc
    frames, rate = _decode(path)
    if frames.shape[0] == 0:
        raise DataError("audio file holds no samples (zero length)", path=path, fix=_fix_for(path))
    if not np.isfinite(frames).all():
        raise DataError("audio holds NaN or infinite samples", path=path, fix=_fix_for(path))
    return resample(to_mono(frames), rate, sample_rate)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header (no decoding); DataError if unreadable."""
    import soundfile as sf

    path = Path(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001
        if not path.exists():
            raise DataError("audio file not found", path=path, fix="check the path") from exc
        raise DataError("cannot read the audio header", path=path, fix=_fix_for(path)) from exc
    return info.frames / info.samplerate if info.samplerate else 0.0


def chunk_audio(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    chunk_seconds: float = CHUNK_SECONDS,
    overlap_seconds: float = 0.0,
) -> list[AudioChunk]:
    """Cut ``audio`` into windows of at most ``chunk_seconds`` that start every ``chunk - overlap`` seconds.

    Short audio gives one chunk; the last chunk may be shorter. Concatenating the chunks
    without overlap gives back the input exactly.
    """
    return list(iter_chunks(audio, sample_rate, chunk_seconds, overlap_seconds))


def iter_chunks(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    chunk_seconds: float = CHUNK_SECONDS,
    overlap_seconds: float = 0.0,
) -> Iterator[AudioChunk]:
    """The windows of :func:`chunk_audio`, lazily (views into ``audio``, no copies)."""
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    if chunk_seconds <= 0 or not 0 <= overlap_seconds < chunk_seconds:
        raise ValueError(
            f"need chunk_seconds > 0 and 0 <= overlap_seconds < chunk_seconds, got {chunk_seconds}, {overlap_seconds}"
        )
    size = int(round(chunk_seconds * sample_rate))
    step = size - int(round(overlap_seconds * sample_rate))
    n = len(audio)
    if n == 0:
        return
    count = max(1, math.ceil(max(n - size, 0) / step) + 1)
    for i in range(count):
        start = i * step
        stop = min(start + size, n)
        yield AudioChunk(audio[start:stop], start / sample_rate, stop / sample_rate)
