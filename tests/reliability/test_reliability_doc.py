"""docs/reliability.md is generated from what the reliability tests check; this test keeps it true.

Regenerate after changing a test:  python tests/reliability/test_reliability_doc.py
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parents[1] / "docs" / "reliability.md"
sys.path.insert(0, str(HERE))

from test_data_validate import EXPECTED_SPEECH, EXPECTED_TEXT  # noqa: E402

# (category, bad input, how it is reported, what is not lost, the test that checks it)
OTHER = [
    ("recipe", "39 malformed recipes (YAML, schema, paths, stacks)", "one line with file and key path, exit 2",
     "nothing written", "tests/test_recipe_fuzz.py"),
    ("model", "a local model whose weights are pickle files only", "one line: `weights are pickle files (pytorch_model.bin); "
     "mmadapt loads safetensors only — fix: … --trust-remote-pickle …`, exit 2", "no version written; loads with "
     "`--trust-remote-pickle` / `MMADAPT_TRUST_REMOTE_PICKLE=1`, same weights",
     "test_model_safety.py::test_pickle_only_model_refused_then_loaded_when_trusted, test_model_safety.py::test_cli_flag"),
    ("model", "a model folder with custom Python code, recipe without `trust_remote_code`",
     "one line: `the model needs its own Python code to load (trust_remote_code is off)`, exit 2",
     "the folder's code never runs; with `trust_remote_code: true` it loads and runs",
     "test_model_safety.py::test_trust_remote_code_only_when_the_recipe_sets_it"),
    ("output", "output_dir on a read-only mount", "one line: `cannot write artifacts: Read-only file system`, exit 2",
     "nothing written", "test_output_errors.py::test_read_only_mount"),
    ("output", "output_dir root cannot create (`/sys/…`)", "one line: `cannot write artifacts: Operation not permitted`, exit 2",
     "nothing written", "test_output_errors.py::test_sysfs_output_dir_root_cannot_write"),
    ("output", "a file where output_dir should be", "one line: `cannot write artifacts: Not a directory`, exit 2",
     "the file is unchanged", "test_output_errors.py::test_a_file_in_place_of_the_output_dir"),
    ("output", "output folder remounted read-only after v0001", "one line: `Read-only file system`, exit 2",
     "every file unchanged; v0001 loads and predicts", "test_output_errors.py::test_read_only_after_a_version_exists"),
    ("output", "disk full (tmpfs with 0, 4 or 64 KiB free) during training checkpoints / artifact writing",
     "one line: `cannot write: No space left on device — fix: free disk space …`, exit 2",
     "no new version, no `.tmp-*` folder, audit log and `current` unchanged; v0001 loads and predicts",
     "test_output_errors.py::test_disk_full_leaves_the_previous_version"),
    ("output", "ENOSPC at `fsync` of the manifest (unit test of the commit path)", "`ArtifactError: cannot write the artifact: "
     "No space left on device`", "the temporary version removed; v0001 and `current` untouched",
     "test_output_errors.py::test_commit_failing_with_enospc_is_an_artifact_error_and_leaves_nothing"),
    ("output", "ENOSPC from a Python write and from safetensors (real, full tmpfs)", "translated to one `ArtifactError` line; "
     "any other exception passes through", "-", "test_output_errors.py::test_cli_translates_real_enospc_from_python_and_safetensors"),
    ("crash", "10 SIGKILLs of `python -m mmadapt.cli run` at seeded random points: 6 during LoRA training, 4 during "
     "artifact writing (evaluation, manifest, rename)", "exit -9 (nothing to report)", "after each: only complete versions "
     "listed, `current` names a complete one, the previous version loads and predicts; a final `--resume` finishes all 60 steps",
     "test_kills.py::test_sigkill_at_random_points_never_corrupts_the_registry"),
    ("output", "disk full while the trainer writes a checkpoint (real, full tmpfs)", "one line: `No space left on device`, exit 2",
     "no `.checkpoint.tmp-*` left taking space; the previous checkpoint and version intact",
     "test_output_errors.py::test_disk_full_during_a_checkpoint_leaves_no_checkpoint_temporary"),
    ("crash", "a kill between the two renames of a checkpoint save (no `checkpoint/`, only `.checkpoint.old-*` / "
     "`.checkpoint.tmp-*`, one of them torn)", "-", "`--resume` takes the newest whole one and ends at the uninterrupted loss; "
     "the leftovers are removed by the next save", "tests/core/test_trainer.py"),
]

CONCURRENCY = "tests/core/test_concurrency.py::"
OTHER += [
    ("concurrency", "8 processes commit versions of one recipe at the same moment (released by one barrier), 10 rounds",
     "nothing to report (before the recipe lock: 70–85% failed with `Directory not empty — fix: free disk space …`)",
     "80 distinct versions v0001–v0080, no `.tmp-*` left, 80 whole `run` lines in audit.jsonl",
     CONCURRENCY + "test_eight_processes_ten_rounds_give_eighty_versions"),
    ("concurrency", "6 processes committing, 2 promoting and 2 rolling back, released together, 10 rounds",
     "only the usual refusals (bars missed, nothing older to roll back to)",
     "`current` names an existing version, the one the audit's last pointer move names; every promote / rollback "
     "records as `previous` the version of the move before it", CONCURRENCY
     + "test_runs_promotions_and_rollbacks_interleaved_keep_current_and_audit_in_step"),
    ("concurrency", "4 threads of one process committing 5 versions each", "-",
     "20 distinct versions; a writer never removes the folder another writer of its process is building",
     CONCURRENCY + "test_threads_of_one_process_commit_distinct_versions"),
    ("concurrency", "the next version name taken by a writer that ignored the lock", "-", "the commit takes the next number",
     CONCURRENCY + "test_a_name_taken_without_the_lock_is_skipped_not_an_error"),
    ("output", "the rename into the version fails with ENOSPC / EROFS / EIO", "one line naming the cause: `cannot write the "
     "artifact: No space left on device — fix: free disk space …`, `… choose a writable output_dir`, `… check the output_dir's "
     "file system …`", "the temporary folder removed (with or without a `with` block)",
     CONCURRENCY + "test_a_failed_rename_names_its_real_cause_and_leaves_no_temporary"),
    ("crash", "`.tmp-*` folders of a dead run, a live run, this pid's earlier life, another host's run", "-",
     "only this host's dead ones and this pid's unbuilt ones are removed; another host's only by age, when asked",
     CONCURRENCY + "test_only_this_hosts_temporaries_of_dead_processes_are_cleaned"),
    ("concurrency", "the recipe lock held by a hung process; then its holder killed",
     "one line after the timeout (300 s): `another process has held .lock for more than 300 s — fix: find it (lslocks …)`",
     "the kernel releases a dead holder's lock", CONCURRENCY + "test_a_held_lock_times_out_as_one_line_and_a_killed_holder_releases_it"),
    ("concurrency", "a mount without file locks (`lockf` answers ENOLCK)", "a `RuntimeWarning`: `no file locks here …`",
     "the commit goes on and is audited", CONCURRENCY + "test_without_file_locks_a_commit_warns_and_goes_on"),
    ("output", "the version renamed in, then writing `current` / the audit line fails", "one line: `v0001 is written, "
     "but not recorded: No space left on device`", "the version stays (the run is not thrown away)",
     CONCURRENCY + "test_a_version_in_place_whose_record_fails_says_so"),
]

MANY_RUNS = [
    "Several runs of one recipe may commit at once (processes on one machine, or hosts sharing the output folder), while "
    "others promote and roll back. Each recipe folder holds an empty lock file, `.lock`, locked with `fcntl.lockf` "
    "(`mmadapt/engine/locks.py`). It is held only to pick the next version number and rename the temporary folder into it, "
    "and around every move of `current` (the commit's policy, `promote`, `rollback`) together with its audit line: "
    "training, evaluation and writing the temporary folder run without it. It is reentrant within a process and "
    "serialises that process's threads.",
    "Versions: the number is the highest complete version + 1, skipping any name already there; the temporary folder is "
    "renamed into it. Should the name be taken anyway (a writer that did not lock), the next number is tried, so N "
    "commits give N versions. A failed commit removes its temporary folder, and its message names the cause (disk full, "
    "read-only, other I/O); `Directory not empty` no longer reaches the user.",
    "Audit: each line is written under the lock, so lines are whole and their order is the order in which `current` "
    "moved. The log stays append-only. Its `when` comes from each host's clock; the order is the file's, not the "
    "timestamps'.",
    "Temporaries are named `.tmp-<host>-<pid>-*`. A new writer removes this host's whose process is dead, and those of its "
    "own pid that none of its writers is building (a pid reused after a container restart). It never removes another "
    "host's: a pid says nothing about another machine, and a long run there keeps its folder for hours without touching "
    "it. Those stay, invisible to `versions`, until removed by hand or by `clean_stale_temporaries(recipe_dir, "
    "foreign_older_than=SECONDS)` once no run there can be that old. Names without a host (older mmadapt) count as this "
    "host's. Assumed: hosts sharing a folder have distinct hostnames (containers: set one each); a dead run's folder "
    "whose pid a live process has taken since stays until that process ends.",
    "Assumed of the file system: `rename` within one folder is atomic and fails onto a non-empty folder (POSIX; local "
    "disks and NFS); `fcntl` record locks work and are released when the holder dies (local: at once; NFSv4: built "
    "in, released when the dead client's lease expires; NFSv3: needs lockd/statd). `flock` is not used: on NFS it is "
    "local to a client or emulated, depending on the kernel. `O_APPEND` writes from several NFS clients are not atomic, "
    "which is why the audit line is written under the lock. On a mount without locks (`ENOLCK`, e.g. NFS `nolock`) "
    "mmadapt warns (`RuntimeWarning`) and goes on: versions stay distinct by the rename retry, but pointer moves from "
    "several hosts could interleave.",
]

KNOWN_GAPS = [
    "The disk-full / read-only translation wraps `mmadapt run` only; `compare` and `batch` (other owners' commands) "
    "are not wrapped and not tested here.",
    "Concurrency is tested with processes and threads of one host on a local ext4 disk; NFS (its locks, several "
    "clients) is assumed from its specification, not tested here.",
    "When the version is renamed in but writing `current` or the audit line then fails, the commit raises "
    "`vNNNN is written, but not recorded: <cause>`; that version stays, without its `run` line.",
]


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _where(file: str, line: int | None) -> str:
    return f"{file}:{line}" if line is not None else file


def render() -> str:
    out = [
        "# Reliability: bad input never crashes, nothing half-written, training survives being killed",
        "",
        "<!-- generated by tests/reliability/test_reliability_doc.py from what the tests assert; do not edit by hand -->",
        "",
        "Every row is a bad input a test really feeds to mmadapt, how it is reported, and what is not lost.",
        "",
        "## Data (`mmadapt data validate RECIPE`)",
        "",
        "All problems of a recipe's data are reported at once, one table row each, with file and line. "
        "Errors exit 2, warnings alone exit 0; validation writes nothing. "
        "Library: `mmadapt.engine.validate.validate_data(recipe) -> list[Problem]`. Each modality's `data.py` parses "
        "each data format once for both: `load_data` (what `mmadapt run` calls) raises the first errors as one line, "
        "`validate_data` returns every problem, so a run stops on what this table calls an error. Only NaN samples in "
        "audio (a full decode) are found up front by validation alone; a run stops when it loads that clip.",
        "",
        _row(["modality", "bad input", "reported at", "severity (exit)", "message contains"]),
        _row(["---"] * 5),
    ]
    for modality, rows in (("text", EXPECTED_TEXT), ("speech", EXPECTED_SPEECH)):
        for bad, file, line, severity, text in rows:
            exit_code = "2" if severity == "error" else "0"
            out.append(_row([modality, bad, _where(file, line), f"{severity} ({exit_code})", f"`{text}`"]))
    out += [
        "",
        "Checked by `tests/reliability/test_data_validate.py` (each row is asserted, and the exact count of problems per dataset).",
        "",
        "## Models, output folder, crashes",
        "",
        _row(["category", "bad input", "how it is reported", "nothing lost", "test"]),
        _row(["---"] * 5),
    ]
    out += [_row(r) for r in OTHER]
    out += [
        "",
        "## How the failures are produced",
        "",
        "- Read-only: a tmpfs mounted `ro` (and one remounted `ro` after a first version), `/sys` and a regular file in place of the "
        "folder. The tests run as root, so `chmod 0o555` would not stop a write and is not used. The mount tests skip where "
        "`mount` is not permitted.",
        "- Disk full: a 2 MiB tmpfs filled to 0, 4 or 64 KiB free before the run: real ENOSPC from the kernel wherever the run writes "
        "first (trainer checkpoint through safetensors, parts, predictions, manifest). One unit test makes `os.fsync` fail with "
        "ENOSPC for the artifact's temporary folder only, to pin the writer's own commit path.",
        "- Pickles: the tiny LM saved as `pytorch_model.bin` only. Remote code: the tiny LM declared as a custom architecture "
        "whose classes are `.py` files in its folder.",
        "- Kills: a real `python -m mmadapt.cli run` subprocess (tiny Llama, prompt + LoRA r=4, 60 steps, a checkpoint every step), "
        "killed with SIGKILL after a seeded random delay (0–0.5 s after it writes a checkpoint, or 0–0.3 s after the adapter part "
        "appears in the temporary version folder), then resumed with `--resume`.",
        "",
        "## Many runs at once",
        "",
    ]
    out += [f"- {item}" for item in MANY_RUNS]
    out += [
        "",
        "## Trusting pickles and remote code",
        "",
        "- Weights load from safetensors only. `mmadapt run --trust-remote-pickle` sets `MMADAPT_TRUST_REMOTE_PICKLE=1` for the "
        "process; the loaders (`load_causal_lm`, `load_whisper`, `check_safetensors_only`) read it through "
        "`mmadapt.models.resolve.pickle_trusted()` unless they are given `allow_pickle=` explicitly. No recipe key turns it on: a "
        "shared recipe cannot make someone else load pickles.",
        "- `trust_remote_code` is a recipe key, off by default; only `trust_remote_code: true` lets a model folder's Python run.",
        "",
        "## Known gaps",
        "",
    ]
    out += [f"- {gap}" for gap in KNOWN_GAPS]
    return "\n".join(out) + "\n"


def _test_module(module: str):
    """A test file of this folder by name, or of another by its path from the repository root."""
    if "/" not in module:
        return importlib.import_module(Path(module).stem)
    spec = importlib.util.spec_from_file_location(Path(module).stem, HERE.parents[1] / module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return loaded


def test_every_row_names_a_test_that_exists():
    for *_, where in OTHER:
        for ref in where.split(", "):
            module, _, name = ref.partition("::")
            if not name:  # a whole test file elsewhere in tests/
                assert (HERE.parents[1] / module).is_file(), ref
            else:
                assert callable(getattr(_test_module(module), name, None)), ref


def test_doc_is_what_the_tests_check():
    assert DOC.read_text(encoding="utf-8") == render(), "run: python tests/reliability/test_reliability_doc.py"


if __name__ == "__main__":
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC}")
