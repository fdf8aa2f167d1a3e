"""A read-only or full output folder: one line (file + fix, exit 2), no half-written version, the previous
version intact.

How the failures are produced (no library is mocked):

* read-only: a tmpfs mounted ``ro`` (or remounted ``ro`` after a first version), ``/sys`` (root cannot
  create folders there: EPERM) and a regular file where the output folder should be (ENOTDIR). chmod 0o555
  does not stop root, so it is not used;
* disk full: a 2 MiB tmpfs filled up to a few KiB before the run (ENOSPC from the kernel while the
  trainer, safetensors or the artifact writer writes); the unit test of the CLI's error translation
  writes with Python and with safetensors into such a full tmpfs (real ENOSPC, no /dev/full needed);
* one unit test patches ``os.fsync`` to fail with ENOSPC, the call where a delayed-allocation filesystem
  reports a full disk, to pin the artifact writer's own error path (commit -> ArtifactError, no leftovers).

The mount tests need root and CAP_SYS_ADMIN (the CI container has both); elsewhere they skip.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmadapt.cli import main
from mmadapt.cli.common import _output_errors
from mmadapt.engine.artifact import ArtifactWriter, versions
from mmadapt.engine.runner import load_artifact
from mmadapt.errors import ArtifactError
from mmadapt.govern.registry import current_version


def _mount_tmpfs(path: Path, size: str, *options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    mounted: list[Path] = []

    def make(name: str, size: str = "2m", *options: str) -> Path:
        path = tmp_path / name
        _mount_tmpfs(path, size, *options)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def recipe(tmp_path, tiny_lm, make_recipe, write_recipe):
    def make(output_dir: Path | str, adapter: bool = False) -> Path:
        strategies = {"prompt": {"system": "Answer briefly."}}
        if adapter:
            strategies["adapter"] = {"method": "lora", "r": 2}
        raw = make_recipe(str(tiny_lm), strategies=strategies, output_dir=str(output_dir),
                          train={"steps": 2, "batch_size": 2, "warmup_steps": 0, "checkpoint_every": 1},
                          inference={"max_new_tokens": 2})
        return write_recipe(raw)

    return make


def _run(recipe_path: Path, *args: str):
    return CliRunner().invoke(main, ["run", str(recipe_path), "--quiet", "--show", "0", *args])


def _one_line(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # not transformers' bars
    assert len(lines) == 1 and " — fix: " in lines[0], result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------- read-only


def test_read_only_mount(tmpfs, recipe):
    out = tmpfs("ro", "1m", "ro")
    line = _one_line(_run(recipe(out)), "cannot write artifacts: Read-only file system", str(out))
    assert "output_dir" in line and _files(out) == set()


def test_sysfs_output_dir_root_cannot_write(recipe):
    out = Path("/sys/mmadapt-reliability-test")
    _one_line(_run(recipe(out)), "cannot write artifacts", str(out))
    assert not out.exists()


def test_a_file_in_place_of_the_output_dir(tmp_path, recipe):
    out = tmp_path / "runs"
    out.write_text("not a folder")
    _one_line(_run(recipe(out)), "cannot write artifacts: Not a directory", str(out))
    assert out.read_text() == "not a folder"


def test_read_only_after_a_version_exists(tmpfs, recipe):
    out = tmpfs("remount", "2m")
    path = recipe(out)
    assert _run(path).exit_code == 0
    before = _files(out)
    subprocess.run(["mount", "-o", "remount,ro", str(out)], check=True)
    _one_line(_run(path), "Read-only file system")
    assert _files(out) == before and versions(out / "tiny-text") == ["v0001"]
    assert isinstance(load_artifact(out / "tiny-text" / "v0001").predictor.predict(["Which port?"])[0].output, str)


# ---------------------------------------------------------------- disk full


def _fill(folder: Path, leave: int) -> None:
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("leave", [0, 4096, 64 * 1024], ids=["0KiB", "4KiB", "64KiB"])
def test_disk_full_leaves_the_previous_version(tmpfs, recipe, leave):
    out = tmpfs(f"full-{leave}", "2m")
    path = recipe(out, adapter=True)
    assert _run(path).exit_code == 0, "the first version must fit"
    rdir = out / "tiny-text"
    before = {p for p in _files(out) if not p.startswith("tiny-text/.work")}
    _fill(out, leave)
    _one_line(_run(path, "--set", "train.steps=3"), "No space left on device", str(rdir))
    after = {p for p in _files(out) if not p.startswith("tiny-text/.work")}
    assert after - before == {"filler"}, after - before  # no version, no temporary folder, audit unchanged
    assert versions(rdir) == ["v0001"] and current_version(rdir) == "v0001"
    (out / "filler").unlink()
    assert isinstance(load_artifact(rdir / "v0001").predictor.predict(["Which port?"])[0].output, str)


def test_disk_full_during_a_checkpoint_leaves_no_checkpoint_temporary(tmpfs, recipe):
    out = tmpfs("full-ckpt", "2m")
    path = recipe(out, adapter=True)
    assert _run(path).exit_code == 0
    _fill(out, 4096)
    _one_line(_run(path, "--set", "train.steps=3"), "No space left on device")
    assert not list(out.rglob(".checkpoint.tmp-*"))


def test_commit_failing_with_enospc_is_an_artifact_error_and_leaves_nothing(tmp_path, monkeypatch):
    with ArtifactWriter(tmp_path, "r") as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        writer.commit({"stack": ["prompt"], "metrics": {}})
    real_fsync = os.fsync

    def full_fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / "r" / ".tmp-")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(ArtifactError, match="cannot write the artifact: No space left on device") as err:
        with ArtifactWriter(tmp_path, "r") as writer:
            (writer.part_dir("prompt") / "prompt.json").write_text("{}")
            writer.commit({"stack": ["prompt"], "metrics": {}})
    assert "\n" not in str(err.value) and "free disk space" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock", "audit.jsonl", "current", "v0001"]  # .lock: empty, kept


def test_cli_translates_real_enospc_from_python_and_safetensors(tmpfs, tmp_path):
    import torch
    from safetensors.torch import save_file

    full = tmpfs("full-unit", "1m")
    _fill(full, 0)
    with pytest.raises(ArtifactError, match="No space left on device") as err, _output_errors(tmp_path):
        with open(full / "predictions.jsonl", "w") as handle:  # the kernel answers ENOSPC when the buffer is flushed
            handle.write("x" * 10_000)
    assert str(err.value).startswith(f"{tmp_path}: cannot write") and "free disk space" in str(err.value)
    with pytest.raises(ArtifactError, match="No space left on device"), _output_errors(tmp_path):
        save_file({"w": torch.zeros(65536)}, str(full / "weights.safetensors"))  # SafetensorError (os error 28)
    with pytest.raises(ValueError), _output_errors(tmp_path):  # anything else is not translated
        raise ValueError("a bug stays a bug")
