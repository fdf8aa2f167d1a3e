"""Batch inference over a file of inputs: sharded by rank, merged in input order, resumable.

The inputs are cut into fixed shards of ``shard_size`` (the same shards whatever the number
of processes, so the predictor sees the same batches and 1 or N processes write the same
bytes). Rank ``r`` of ``w`` predicts shards ``r, r + w, ...`` through the artifact's
predictor — whatever the modality: questions, audio files, image prompts — and writes
each finished shard to ``<output>.parts/shard-NNNNNN.jsonl`` atomically. A rerun (same
inputs, same artifact) skips the shards already there; rank 0 gathers every shard and
writes ``<output>`` in input order, one JSON line per input.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmadapt.engine import distributed
from mmadapt.engine.artifact import MANIFEST, read_manifest, write_json_atomic, write_text_atomic
from mmadapt.errors import DataError, MmadaptError
from mmadapt.protocols import get_modality

PLAN = "plan.json"
MAX_SHARD_SIZE = 100_000


@dataclass
class BatchReport:
    output: Path
    inputs: int
    shards: int
    predicted: int  # shards this process predicted now
    skipped: int  # shards this process found finished
    rank: int = 0
    world_size: int = 1


def read_inputs(path: str | Path, input_keys: Sequence[str], option_keys: Sequence[str] = (), options: dict[str, dict] | None = None) -> list[tuple[str, Any]]:
    """(id, input) per input: a folder gives its files (sorted); a .jsonl file one record per line
    (a string, or an object with an ``id`` and one of ``input_keys`` — the modality's
    :attr:`~mmadapt.protocols.Modality.input_keys`, first found wins); any other file one input
    per non-empty line. A record's ``option_keys`` (the modality's per-request settings) go to
    ``options[id]`` when a dict is passed."""
    path = Path(path)
    if not path.exists():
        raise DataError("inputs not found", path=path, fix="pass a file of inputs or a folder of files")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        items = [(str(p.relative_to(path)), str(p)) for p in files]
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise DataError("inputs are not UTF-8 text", path=path, fix="one input per line, or JSONL, or a folder of files") from None
        items = []
        jsonl = path.suffix.lower() == ".jsonl"
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not jsonl:
                items.append((f"line-{number}", line.strip()))
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise DataError(f"line {number}: not JSON ({exc.msg})", path=path, fix="one JSON value per line") from None
            if isinstance(record, dict):
                key = next((k for k in input_keys if k in record), None)
                if key is None:
                    raise DataError(f"line {number}: no input key (one of {', '.join(input_keys)})", path=path)
                item_id = str(record.get("id", f"line-{number}"))
                items.append((item_id, record[key]))
                given = {k: record[k] for k in option_keys if k in record}
                if given and options is not None:
                    options[item_id] = {**given, "_source": f"{path}:{number}"}
            else:
                items.append((f"line-{number}", record))
    if not items:
        raise DataError("no inputs", path=path, fix="add inputs (one per line, JSONL, or files in the folder)")
    return items


def resolve_target(target: str | Path, output_dir: str | None = None) -> Path:
    """A version folder, or a recipe file (its current version), -> the version folder."""
    target = Path(target)
    if target.is_dir():
        if not (target / MANIFEST).is_file():
            raise MmadaptError("not an artifact version (no manifest.json)", path=target, fix="pass runs/<name>/<version> or a recipe")
        return target
    if target.suffix in (".yaml", ".yml") or target.is_file():
        from mmadapt.engine.versions import recipe_dir, resolve_version
        from mmadapt.recipe import load_recipe

        recipe = load_recipe(target)
        return resolve_version(recipe_dir(output_dir or recipe.output_dir, recipe.name), None)
    raise MmadaptError("neither a recipe file nor an artifact folder", path=target, fix="pass a recipe .yaml or runs/<name>/<version>")


def _plan(items: list[tuple[str, Any]], version_dir: Path, shard_size: int) -> dict[str, Any]:
    manifest = read_manifest(version_dir)
    digest = hashlib.sha256(json.dumps(items, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "inputs": len(items),
        "inputs_sha256": digest,
        "shard_size": shard_size,
        "artifact": str(version_dir.resolve()),
        "artifact_created": manifest.get("created"),
        "recipe_hash": manifest.get("recipe_hash"),
    }


def _shard_lines(path: Path, expected: int) -> str | None:
    """The text of a finished shard file, or None when it is missing or incomplete."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    lines = text.splitlines()
    if len(lines) != expected:
        return None
    try:
        for line in lines:
            json.loads(line)
    except ValueError:
        return None
    return text


def run_batch(
    target: str | Path,
    inputs: str | Path,
    output: str | Path,
    *,
    shard_size: int = 16,
    output_dir: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> BatchReport:
    """Predict every input with the artifact ``target`` (this rank's shards), then merge on rank 0."""
    if not 1 <= shard_size <= MAX_SHARD_SIZE:
        raise MmadaptError(f"shard size {shard_size} is out of range", fix=f"use 1 to {MAX_SHARD_SIZE}")
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    distributed.initialize()
    rank, world = distributed.rank(), distributed.world_size()
    output = Path(output)
    parts = output.with_name(output.name + ".parts")
    files_dir = output.with_name(output.name + ".files")
    version_dir = resolve_target(target, output_dir)
    modality = get_modality(read_manifest(version_dir)["modality"])
    options: dict[str, dict] = {}
    items = read_inputs(inputs, modality.input_keys, modality.option_keys, options)
    requests = {}  # per-request options folded into the predictor's input, checked before anything is written
    for item_id, value in items:
        if item_id in options:
            given = dict(options[item_id])
            requests[item_id] = modality.request_input(value, given, given.pop("_source"))
    plan = _plan(items, version_dir, shard_size)
    if options:
        plan["options_sha256"] = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()

    if distributed.is_main():
        try:
            parts.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MmadaptError(f"cannot write shards: {exc.strerror}", path=parts, fix="choose a writable --output") from None
        plan_path = parts / PLAN
        if plan_path.is_file():
            try:
                previous = json.loads(plan_path.read_text(encoding="utf-8"))
            except ValueError:
                previous = None
            if previous != plan:
                raise MmadaptError(
                    "finished shards here belong to other inputs, artifact or shard size",
                    path=parts,
                    fix=f"delete {parts} or choose another --output",
                )
        else:
            write_json_atomic(plan_path, plan)
        for stale in parts.glob(".shard-*"):  # temporaries of shards a killed run was writing
            stale.unlink(missing_ok=True)
    distributed.barrier()  # the plan is checked before any rank reads or writes a shard

    n_shards = math.ceil(len(items) / shard_size)
    chunks = [items[k * shard_size : (k + 1) * shard_size] for k in range(n_shards)]
    mine = distributed.shard_indices(n_shards)
    predictor = None
    texts: list[str] = []
    predicted = skipped = 0
    for k in mine:
        path = parts / f"shard-{k:06d}.jsonl"
        text = _shard_lines(path, len(chunks[k]))
        if text is not None:
            skipped += 1
            texts.append(text)
            continue
        if predictor is None:  # load the model only when there is something left to predict
            from mmadapt.engine.runner import load_artifact

            predictor = load_artifact(version_dir).predictor
        start = k * shard_size
        predictions = predictor.predict([requests.get(i, x) for i, x in chunks[k]], progress=progress)
        lines = []
        for offset, ((item_id, value), pred) in enumerate(zip(chunks[k], predictions, strict=True)):
            index = start + offset
            record = {
                "index": index,
                "id": item_id,
                "input": value,
                "output": modality.output_json(pred.output, index, files_dir),
                "sources": list(pred.sources),
            }
            lines.append(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        text = "".join(lines)
        write_text_atomic(path, text)
        predicted += 1
        texts.append(text)
    log(f"batch rank {rank}/{world}: predicted {predicted} shards, skipped {skipped} finished shards (of {len(mine)} on this rank)")

    merged = distributed.gather_in_order(texts, n_shards)
    if merged is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, "".join(merged))
    distributed.barrier()  # the merged file exists before any rank returns
    return BatchReport(output, len(items), n_shards, predicted, skipped, rank, world)
