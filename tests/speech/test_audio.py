"""Audio loading: mono 16 kHz float32, resampling, chunking, one-line errors naming the file."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from mmadapt.errors import DataError
from mmadapt.modalities.speech.audio import SAMPLE_RATE, audio_duration, chunk_audio, iter_chunks, load_audio, resample, to_mono


def _dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_16k_mono_wav_is_returned_unchanged(tmp_path, tone):
    wav = tmp_path / "a.wav"
    x = tone(1.0, 16000)
    sf.write(wav, x, 16000, subtype="FLOAT")
    y = load_audio(wav)
    assert y.dtype == np.float32 and y.ndim == 1
    np.testing.assert_array_equal(y, x)


def test_stereo_is_downmixed_by_averaging(tmp_path, tone):
    wav = tmp_path / "st.wav"
    x = tone(0.5, 16000, channels=2)  # right channel = 2 x left
    sf.write(wav, x, 16000, subtype="FLOAT")
    y = load_audio(wav)
    np.testing.assert_allclose(y, x.mean(axis=1), atol=1e-7)
    np.testing.assert_allclose(y, 1.5 * x[:, 0], atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k_keeping_pitch_and_duration(tmp_path, tone, rate):
    wav = tmp_path / f"r{rate}.wav"
    sf.write(wav, tone(2.0, rate, freq=440.0), rate, subtype="PCM_16")
    y = load_audio(wav)
    assert abs(len(y) - 2 * SAMPLE_RATE) <= 1
    assert abs(_dominant_freq(y, SAMPLE_RATE) - 440.0) < 1.0
    assert 0.4 < np.abs(y).max() < 0.6  # amplitude kept (int16 file normalised to [-1, 1])


def test_flac_and_ogg_are_read(tmp_path, tone):
    for name, fmt in (("a.flac", "FLAC"), ("a.ogg", "OGG")):
        path = tmp_path / name
        sf.write(path, tone(1.0, 16000), 16000, format=fmt)
        assert abs(len(load_audio(path)) - 16000) <= 1


def test_resample_and_to_mono_helpers(tone):
    x = tone(1.0, 48000)
    assert len(resample(x, 48000, 16000)) == 16000
    assert resample(x, 16000, 16000) is x
    assert to_mono(np.ones((5, 1), np.float32)).shape == (5,)


def _err(path) -> str:
    with pytest.raises(DataError) as info:
        load_audio(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_missing_file(tmp_path):
    assert "not found" in _err(tmp_path / "nope.wav")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    assert "empty" in _err(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" + os.urandom(64))
    assert "cannot decode" in _err(path)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 10)
    assert "cannot decode" in _err(text)


def test_zero_length_file(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    assert path.stat().st_size > 0
    assert "no samples" in _err(path)


def test_non_finite_samples(tmp_path):
    path = tmp_path / "nan.wav"
    x = np.zeros(100, np.float32)
    x[10] = np.nan
    sf.write(path, x, 16000, subtype="FLOAT")
    assert "NaN" in _err(path)


def test_folder_and_unreadable_file(tmp_path):
    assert "not a file" in _err(tmp_path)
    path = tmp_path / "locked.wav"
    sf.write(path, np.zeros(100, np.float32), 16000)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: nothing to test then
            pytest.skip("running as root")
        assert "cannot read" in _err(path)
    finally:
        path.chmod(0o644)


def test_chunks_of_short_audio_is_one_window():
    x = np.arange(16000, dtype=np.float32)
    chunks = chunk_audio(x)
    assert len(chunks) == 1 and chunks[0].start == 0 and chunks[0].end == 1.0
    assert chunk_audio(np.zeros(0, np.float32)) == []


def test_chunks_cover_the_audio_exactly():
    x = np.arange(int(65.5 * 16000), dtype=np.float32)
    chunks = chunk_audio(x)
    assert [len(c.samples) for c in chunks] == [480000, 480000, 88000]
    assert [(c.start, c.end) for c in chunks] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.5)]
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), x)
    # exactly 30 s is one window, 30 s + 1 sample is two
    assert len(chunk_audio(np.zeros(480000, np.float32))) == 1
    assert len(chunk_audio(np.zeros(480001, np.float32))) == 2


def test_overlapping_chunks():
    x = np.arange(50 * 16000, dtype=np.float32)
    chunks = chunk_audio(x, chunk_seconds=30, overlap_seconds=5)
    assert [(c.start, c.end) for c in chunks] == [(0.0, 30.0), (25.0, 50.0)]
    with pytest.raises(ValueError):
        chunk_audio(x, chunk_seconds=10, overlap_seconds=10)
    with pytest.raises(ValueError):
        list(iter_chunks(np.zeros((2, 2), np.float32)))


def test_ten_minute_audio_loads_and_chunks(tmp_path):
    path = tmp_path / "long.wav"
    rate = 22050
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal((600 * rate, 2))).astype(np.float32), rate, subtype="PCM_16")
    assert audio_duration(path) == pytest.approx(600.0)
    y = load_audio(path)
    assert abs(len(y) - 600 * SAMPLE_RATE) <= 1
    chunks = chunk_audio(y)
    assert len(chunks) == 20 and all(len(c.samples) == 480000 for c in chunks)
    assert chunks[-1].end == pytest.approx(600.0)


def test_duration_of_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "x.wav"
    path.write_text("nope")
    with pytest.raises(DataError, match="x.wav"):
        audio_duration(path)
