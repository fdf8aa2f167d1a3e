"""Library noise around loading and generating: one line of our own for a conversion, no third-party bars,
the known-harmless warnings ignored, everything else (and the settings) as it was."""

from __future__ import annotations

import warnings

import pytest

from mmadapt.models.cache import cached_build
from mmadapt.models.quiet import HARMLESS_WARNINGS, quiet_libraries


def test_a_build_says_once_what_it_does_and_where_it_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MMADAPT_CACHE", str(tmp_path))

    def build(out):
        (out / "w.safetensors").write_bytes(b"abc")

    first = cached_build("thing", "f" * 64, build, announce="thing: converting x")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"thing: converting x (once: cached in {first})\n"
    cached_build("thing", "f" * 64, build, announce="thing: converting x")
    assert capsys.readouterr().err == ""  # cached: nothing to say


def test_the_known_harmless_warnings_are_ignored_and_others_still_show():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            for category, message, _why in HARMLESS_WARNINGS:
                warnings.warn(f"{message} and more", category, stacklevel=1)
            warnings.warn("a real problem", UserWarning, stacklevel=1)
        warnings.warn("`is_gradient_checkpointing` is deprecated outside", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a real problem", "`is_gradient_checkpointing` is deprecated outside"]


def test_transformers_bars_and_logs_inside_only_and_errors_pass_through():
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):
        pytest.skip("this transformers has no tqdm hook")
    level = hf_logging.get_verbosity()
    with quiet_libraries(logs_errors_only=True):
        assert hf_logging.tqdm(range(3), desc="Loading weights").disable
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert hf_logging.get_verbosity() == level
    with pytest.raises(RuntimeError, match="boom"), quiet_libraries(logs_errors_only=True):
        raise RuntimeError("boom")
    assert hf_logging.get_verbosity() == level
    outside = hf_logging.tqdm(range(3), desc="Loading weights", disable=False)
    assert not outside.disable or not hf_logging.is_progress_bar_enabled()
    outside.close()


def test_the_gguf_reader_bar_is_off_during_the_conversion_only():
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    from mmadapt.models.embedded import _no_gguf_progress_bar

    real = gguf_utils.tqdm
    with _no_gguf_progress_bar():
        bar = gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors...")
        assert bar.disable
        bar.close()
    assert gguf_utils.tqdm is real


def test_drop_import_notices_drops_only_the_listed_record(caplog):
    import logging

    from mmadapt.models.quiet import IMPORT_NOTICES, drop_import_notices

    name, message, _why = IMPORT_NOTICES[0]
    logger = logging.getLogger(name)
    drop_import_notices()
    drop_import_notices()  # idempotent: one filter
    assert sum(type(f).__name__ == "_DropNotice" for f in logger.filters) == 1
    with caplog.at_level(logging.WARNING, logger=name):
        logger.warning(message + ": %s. Please make sure ...", "No module named 'kernels'")
        logger.warning("a different warning from the same library")
    assert [r.getMessage() for r in caplog.records] == ["a different warning from the same library"]
