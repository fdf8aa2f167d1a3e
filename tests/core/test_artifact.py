"""Artifacts are written atomically: a version appears only complete, with its manifest; a SIGKILL
mid-write leaves no version and the previous one intact; pickle files are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mmadapt.engine.artifact import (
    MANIFEST,
    ArtifactWriter,
    _host,
    check_safetensors_only,
    clean_stale_temporaries,
    read_manifest,
    versions,
)
from mmadapt.errors import ArtifactError
from mmadapt.govern.registry import current_version, list_versions, show


def _commit(out, name="r", metrics=None, payload=b"weights"):
    with ArtifactWriter(out, name) as writer:
        (writer.part_dir("prompt") / "prompt.json").write_bytes(payload)
        return writer.commit({"stack": ["prompt"], "metrics": metrics or {"fact_accuracy": 0.5}, "recipe": {"name": name}})


def test_commit_writes_numbered_versions_with_manifest(tmp_path):
    first = _commit(tmp_path)
    second = _commit(tmp_path, payload=b"other")
    assert (first.name, second.name) == ("v0001", "v0002")
    assert read_manifest(second)["version"] == "v0002"
    assert (second / "prompt" / "prompt.json").read_bytes() == b"other"
    assert versions(tmp_path / "r") == ["v0001", "v0002"]
    assert current_version(tmp_path / "r") == "v0002"
    assert not list((tmp_path / "r").glob(".tmp-*"))


def test_nothing_visible_before_commit_and_abort_leaves_nothing(tmp_path):
    writer = ArtifactWriter(tmp_path, "r")
    (writer.part_dir("index") / "vectors.safetensors").write_bytes(b"x" * 10)
    assert versions(tmp_path / "r") == []
    assert writer.tmp.name.startswith(f".tmp-{_host()}-{os.getpid()}-")  # the host's name, [A-Za-z0-9._-] only
    writer.abort()
    assert not writer.tmp.exists() and versions(tmp_path / "r") == []


def test_exception_inside_the_with_block_publishes_nothing(tmp_path):
    _commit(tmp_path)
    with pytest.raises(RuntimeError), ArtifactWriter(tmp_path, "r") as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        raise RuntimeError("training diverged")
    assert versions(tmp_path / "r") == ["v0001"]
    assert not list((tmp_path / "r").glob(".tmp-*"))


def test_a_folder_without_manifest_is_not_a_version(tmp_path):
    _commit(tmp_path)
    (tmp_path / "r" / "v0002").mkdir()  # e.g. a copy that was interrupted
    assert versions(tmp_path / "r") == ["v0001"]
    assert [row["version"] for row in list_versions(tmp_path / "r")] == ["v0001"]
    # the next commit skips the occupied name instead of writing into it
    assert _commit(tmp_path).name == "v0003"


def test_stale_temporaries_of_dead_pids_are_cleaned(tmp_path):
    """Names written before the host was part of them (``.tmp-<pid>-*``) count as this host's."""
    rdir = tmp_path / "r"
    rdir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = rdir / f".tmp-{int(dead.stdout)}-abc"
    (stale / "adapter").mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        kept = rdir / f".tmp-{live.pid}-def"
        kept.mkdir()
        removed = clean_stale_temporaries(rdir)
        assert removed == [stale] and not stale.exists() and kept.exists()
    finally:
        live.kill()
        live.wait()
    ArtifactWriter(tmp_path, "r").abort()  # a new writer cleans too, now the pid is dead
    assert not kept.exists()


@pytest.mark.parametrize("name", ["model.bin", "weights.pt", "opt.pth", "last.ckpt", "data.pkl", "x.pickle"])
def test_pickle_files_are_refused(tmp_path, name):
    _commit(tmp_path)
    with pytest.raises(ArtifactError, match=f"pickle file {name}"), ArtifactWriter(tmp_path, "r") as writer:
        (writer.part_dir("adapter") / name).write_bytes(b"\x80\x04")
        writer.commit({"stack": ["adapter"]})
    assert versions(tmp_path / "r") == ["v0001"]
    assert not list((tmp_path / "r").glob(".tmp-*"))


def test_check_safetensors_only_accepts_safetensors(tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"x")
    check_safetensors_only(tmp_path, publish=True)  # no error


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        read_manifest(tmp_path)


def test_unwritable_output_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ArtifactError, match="cannot write artifacts") as err:
        ArtifactWriter(blocker, "r")
    assert "\n" not in str(err.value)


KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from mmadapt.engine.artifact import ArtifactWriter
    writer = ArtifactWriter(sys.argv[1], "r")
    part = writer.part_dir("full")
    with open(part / "model.safetensors", "wb") as handle:
        for _ in range(64):
            handle.write(b"\\0" * (1 << 20))
        handle.flush()
        print(writer.tmp, flush=True)
        time.sleep(120)
    writer.commit({"stack": ["full"]})
    """
)


def test_sigkill_mid_write_leaves_previous_version(tmp_path):
    previous = _commit(tmp_path, metrics={"fact_accuracy": 0.75})
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        tmp = proc.stdout.readline().strip()
        assert tmp, "the writer did not start"
        assert os.path.isdir(tmp) and os.path.getsize(os.path.join(tmp, "full", "model.safetensors")) == 64 << 20
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rdir = tmp_path / "r"
    assert versions(rdir) == ["v0001"]
    assert [row["version"] for row in list_versions(rdir)] == ["v0001"]
    assert current_version(rdir) == "v0001"
    assert show(rdir)["metrics"] == {"fact_accuracy": 0.75}
    assert (previous / "prompt" / "prompt.json").read_bytes() == b"weights"
    assert os.path.isdir(tmp)  # the half-written folder is still there, invisible ...
    after = _commit(tmp_path)  # ... until the next writer removes it
    assert not os.path.exists(tmp)
    assert after.name == "v0002"
    assert json.loads((after / MANIFEST).read_text())["version"] == "v0002"
