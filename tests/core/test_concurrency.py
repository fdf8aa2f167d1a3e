"""Many runs of one recipe at once lose nothing: each commit gets its own version, ``current``
and ``audit.jsonl`` agree however runs, promotions and rollbacks interleave, and only the
temporary folders of dead runs on this host are cleaned.

The processes are real (``python -c`` with the worker below); the parent releases each round
with one line to every stdin once all of them have said ``ready`` (a barrier).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mmadapt.engine.artifact import ArtifactWriter, _host, clean_stale_temporaries
from mmadapt.engine.locks import LOCK, recipe_lock
from mmadapt.engine.versions import read_audit, versions
from mmadapt.errors import ArtifactError

ROOT = Path(__file__).resolve().parents[2]
BARS = {"fact_accuracy": 0.5}

WORKER = textwrap.dedent(
    """
    import json, random, sys
    from pathlib import Path
    from types import SimpleNamespace
    from mmadapt.engine.artifact import ArtifactWriter
    from mmadapt.errors import MmadaptError
    from mmadapt.govern import registry

    out, role, rounds, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng, rdir = random.Random(seed), Path(out) / "r"
    recipe = SimpleNamespace(eval=SimpleNamespace(min=__BARS__, suites=[]), source=None)
    for _ in range(rounds):
        if role == "commit":
            writer = ArtifactWriter(out, "r")
            (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        print("ready", flush=True)
        sys.stdin.readline()
        if role == "commit":  # odd seeds: a recipe with bars (the run waits for promote), even: none
            evals = {"min": recipe.eval.min} if seed % 2 else {}
            done = writer.commit({"stack": ["prompt"], "metrics": {"fact_accuracy": rng.random()},
                                  "recipe": {"name": "r", "eval": evals}}).name
        else:
            try:
                found = registry.versions(rdir)
                if role == "rollback":
                    done = registry.rollback(rdir, reason="drill")
                else:
                    done = registry.promote(rdir, rng.choice(found), recipe) if found else "none"
            except MmadaptError as exc:  # bars missed, nothing older to roll back to: refusals, not failures
                done = "refused: " + str(exc)
        print(json.dumps(done), flush=True)
    """
).replace("__BARS__", repr(BARS))


def _race(out: Path, roles: list[str], rounds: int, logs: Path) -> list[str]:
    """Start one process per role; ``rounds`` times release them all at once; every result."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    procs = []
    for seed, role in enumerate(roles):
        with open(logs / f"{seed}-{role}.err", "w") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", WORKER, str(out), role, str(rounds), str(seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
            ))
    results = []
    try:
        for _ in range(rounds):
            for seed, proc in enumerate(procs):
                assert proc.stdout.readline().strip() == "ready", (logs / f"{seed}-{roles[seed]}.err").read_text()
            for proc in procs:  # the barrier: everyone goes at once
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for seed, proc in enumerate(procs):
                line = proc.stdout.readline()
                assert line, (logs / f"{seed}-{roles[seed]}.err").read_text()
                results.append(json.loads(line))
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _audit_lines(rdir: Path) -> list[dict]:
    raw = (rdir / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in raw]  # every line whole: none torn, none glued to another
    assert entries == read_audit(rdir)
    return entries


def _moves(entries: list[dict]) -> list[dict]:
    """The audit's pointer moves, in order: runs that became current, promotions, rollbacks."""
    return [e for e in entries if (e["what"] == "run" and e["current"]) or e["what"] in ("promote", "rollback")]


def test_eight_processes_ten_rounds_give_eighty_versions(tmp_path):
    out = tmp_path / "runs"
    started = time.monotonic()
    made = _race(out, ["commit"] * 8, 10, tmp_path)
    rdir = out / "r"
    assert len(made) == 80 and len(set(made)) == 80
    assert versions(rdir) == [f"v{n:04d}" for n in range(1, 81)]
    assert sorted(made) == versions(rdir)
    assert not list(rdir.glob(".tmp-*"))
    runs = [e for e in _audit_lines(rdir) if e["what"] == "run"]
    assert len(runs) == 80 and sorted(e["version"] for e in runs) == versions(rdir)
    assert (rdir / "current").read_text().strip() == _moves(runs)[-1]["version"]
    assert time.monotonic() - started < 30


def test_runs_promotions_and_rollbacks_interleaved_keep_current_and_audit_in_step(tmp_path):
    out = tmp_path / "runs"
    roles = ["commit"] * 6 + ["promote"] * 2 + ["rollback"] * 2
    results = _race(out, roles, 10, tmp_path)
    rdir = out / "r"
    assert len(versions(rdir)) == 60 and not list(rdir.glob(".tmp-*"))
    entries = _audit_lines(rdir)
    assert sum(e["what"] == "run" for e in entries) == 60
    moves = _moves(entries)
    assert {e["what"] for e in moves} == {"run", "promote", "rollback"}, "the race never interleaved all three"
    current = (rdir / "current").read_text().strip()
    assert current in versions(rdir) and current == moves[-1]["version"]
    # each promote / rollback read the pointer the move before it had written: the audit's order is the order of the moves
    for before, move in zip(moves, moves[1:], strict=False):
        if "previous" in move:
            assert move["previous"] == before["version"], (before, move)
    assert sum(isinstance(r, str) and r.startswith("refused") for r in results) < len(results)


def test_threads_of_one_process_commit_distinct_versions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output_dir, as in recipes (output_dir: runs)
    made, errors = [], []

    def commit_five():
        try:
            for _ in range(5):
                with ArtifactWriter("runs", "r") as writer:  # a second writer here must not clean the first's folder
                    (writer.part_dir("prompt") / "prompt.json").write_text("{}")
                    made.append(writer.commit({"stack": ["prompt"], "metrics": {}}).name)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=commit_five) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(made) == versions(tmp_path / "runs" / "r") and len(made) == 20


def test_a_name_taken_without_the_lock_is_skipped_not_an_error(tmp_path, monkeypatch):
    """A writer that ignores the lock (an old mmadapt, a mount without locks) takes v0001 first: retry v0002."""
    real_rename = os.rename

    def racing_rename(src, dst):
        if Path(dst).name == "v0001" and not Path(dst).exists():
            (Path(dst) / "prompt").mkdir(parents=True)
            (Path(dst) / "manifest.json").write_text("{}")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", racing_rename)
    with ArtifactWriter(tmp_path, "r") as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        assert writer.commit({"stack": ["prompt"], "metrics": {}}).name == "v0002"
    assert json.loads((tmp_path / "r" / "v0002" / "manifest.json").read_text())["version"] == "v0002"
    assert not list((tmp_path / "r").glob(".tmp-*"))


@pytest.mark.parametrize(("code", "fix"), [(errno.ENOSPC, "free disk space"), (errno.EROFS, "choose a writable output_dir"),
                                           (errno.EIO, "check the output_dir's file system")])
def test_a_failed_rename_names_its_real_cause_and_leaves_no_temporary(tmp_path, monkeypatch, code, fix):
    def failing_rename(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "rename", failing_rename)
    writer = ArtifactWriter(tmp_path, "r")  # not in a with block: commit cleans up by itself
    (writer.part_dir("prompt") / "prompt.json").write_text("{}")
    with pytest.raises(ArtifactError, match=f"cannot write the artifact: {os.strerror(code)}") as err:
        writer.commit({"stack": ["prompt"], "metrics": {}})
    assert fix in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [LOCK]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_only_this_hosts_temporaries_of_dead_processes_are_cleaned(tmp_path):
    building = ArtifactWriter(tmp_path, "r")  # this process's live writer
    rdir, host, dead = tmp_path / "r", _host(), _dead_pid()
    stale = rdir / f".tmp-{host}-{dead}-abc123"
    (stale / "adapter").mkdir(parents=True)
    foreign = rdir / f".tmp-gpu-node-7.cluster-{dead}-def456"  # a dead pid here, but it is another machine's run
    foreign.mkdir()
    abandoned = rdir / f".tmp-{host}-{os.getpid()}-ghi789"  # this pid, no writer of this process: an earlier life of the pid
    abandoned.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        kept = rdir / f".tmp-{host}-{live.pid}-jkl012"
        kept.mkdir()
        assert sorted(clean_stale_temporaries(rdir)) == sorted([stale, abandoned])
        assert kept.exists() and foreign.exists() and building.tmp.exists()
        old = time.time() - 7200
        os.utime(foreign, (old, old))
        assert clean_stale_temporaries(rdir) == []  # another host's folder is never judged by its pid ...
        assert clean_stale_temporaries(rdir, foreign_older_than=3600) == [foreign]  # ... only by age, when asked
        assert kept.exists() and building.tmp.exists()
        building.abort()
    finally:
        live.kill()
        live.wait()
    assert clean_stale_temporaries(rdir) == [kept]  # its process is gone now


HOLDER = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.lockf(fd, fcntl.LOCK_EX); " \
         "print('held', flush=True); time.sleep(60)"


def test_a_held_lock_times_out_as_one_line_and_a_killed_holder_releases_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ArtifactError, match=r"another process has held \.lock for more than 0 s"), recipe_lock(tmp_path, 0.2):
            pass
    finally:
        holder.kill()
        holder.wait()
    with recipe_lock(tmp_path, timeout=5), recipe_lock(tmp_path):  # the kernel released it; reentrant in one thread
        pass


def test_without_file_locks_a_commit_warns_and_goes_on(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, cmd, *args):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.warns(RuntimeWarning, match="no file locks here"), ArtifactWriter(tmp_path, "r") as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        assert writer.commit({"stack": ["prompt"], "metrics": {}}).name == "v0001"
    assert [e["version"] for e in read_audit(tmp_path / "r")] == ["v0001"]


def test_a_version_in_place_whose_record_fails_says_so(tmp_path, monkeypatch):
    import mmadapt.engine.artifact as artifact

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(artifact, "committed", full_disk)
    with pytest.raises(ArtifactError, match="v0001 is written, but not recorded: No space left on device"), \
            ArtifactWriter(tmp_path, "r") as writer:
        (writer.part_dir("prompt") / "prompt.json").write_text("{}")
        writer.commit({"stack": ["prompt"], "metrics": {}})
    assert versions(tmp_path / "r") == ["v0001"] and not list((tmp_path / "r").glob(".tmp-*"))
