"""The runs of a comparison: one per stack, or, with a grid, one per stack and setting — each
recipe validated before anything runs.

``mmadapt compare RECIPE --grid adapter.r=8,16 --grid train.lr=1e-3,2e-3`` (or the recipe's
``compare.grid: {adapter.r: [8, 16], train.lr: [1.0e-3, 2.0e-3]}``) sweeps settings. Which stacks
a grid key applies to:

* ``<strategy>.<key>`` (also ``strategies.<strategy>.<key>``), e.g. ``adapter.r``,
  ``full.train.lr``: the stacks that contain that strategy;
* ``train.<key>``: the stacks that train (hold a strategy whose ``trains`` is true). Refused where a
  strategy of such a stack sets that key in its own ``train:`` overrides (the sweep would not
  change it): sweep ``<strategy>.train.<key>`` then;
* ``inference.<key>``: every stack but ``base``;
* ``base`` runs once, as the recipe says: the floor every setting is measured against. Other
  sections (``data``, ``eval``, ``base_model`` ...) are not swept: they change what is measured.

A stack runs once per combination of the values of the keys that apply to it (keys in the order
given, values in the order given); a stack no key applies to runs once. A run is labelled
``adapter[r=8,lr=0.001]`` (each key by its last part, or whole where two keys end alike) and
named ``<recipe>--adapter--r8-lr0.001`` (its own versions; at most 64 characters, a hash of the
label ends a name that would be longer). A key that does not exist (with the validator's
did-you-mean), a value of the wrong type, an empty list of values, or a key that applies to no
stack of the comparison is one :class:`~mmadapt.errors.RecipeError` naming the key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmadapt.config import CompareConfig
from mmadapt.errors import RecipeError
from mmadapt.protocols import STACK_ORDER, get_modality
from mmadapt.recipe import Recipe, parse_stack, stack_label, validate_recipe

SECTIONS = ("train", "inference")  # the recipe sections a grid may sweep, besides the strategies'
MAX_NAME = 64  # recipe.NAME_PATTERN
_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


@dataclass(frozen=True)
class Run:
    """One run of a comparison."""

    stack: str  # the plain stack label: 'base', 'adapter', 'prompt+retrieval'
    settings: dict[str, Any]  # grid key ('adapter.r', 'train.lr') -> value; {} without a grid
    label: str  # what the report shows: 'adapter[r=8,lr=0.001]' ('adapter' without settings)
    slug: str  # file-safe: 'adapter--r8-lr0.001' (the report's stacks/<slug>.yaml)
    recipe: Recipe  # what runs, validated: named '<recipe>--<slug>', absolute data paths, no compare section


@dataclass(frozen=True)
class _Key:
    given: str  # as written: 'strategies.adapter.r', 'adapter.r', 'train.lr'
    name: str  # 'adapter.r', 'train.lr'
    path: tuple[str, ...]  # in the recipe: ('strategies', 'adapter', 'r'), ('train', 'lr')
    strategy: str | None  # the strategy whose section it is in; None for train / inference


def default_stacks(recipe: Recipe) -> list[str]:
    """base, each configured strategy alone, and the whole stack."""
    names = recipe.stack
    stacks = ["base"] + [n for n in STACK_ORDER if n in names]
    if len(names) > 1:
        stacks.append(stack_label(names))
    return stacks


def stack_recipe(recipe: Recipe, names: list[str]) -> Recipe:
    """The recipe one stack of a comparison runs: named ``<name>--<stack>``, its own versions, no compare section."""
    sub = recipe.with_stack(names)
    return sub.model_copy(
        update={
            "name": fit_name(f"{recipe.name}--{stack_label(names)}".replace("+", "-")),
            "output_dir": str(Path(recipe.output_dir).resolve()),
            "compare": CompareConfig(),
            "compare_strategies": {},
        }
    )


def fit_name(name: str) -> str:
    """A run's recipe name, at most 64 characters: a longer one is cut and ends with a hash of the whole."""
    return name if len(name) <= MAX_NAME else f"{name[: MAX_NAME - 9].rstrip('-.')}-{_digest(name)}"


def runnable(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe with its data paths absolute, as a mapping that validates (and runs) from anywhere."""
    resolved = recipe.resolved()
    resolved["data"] = {k: (recipe.data_paths.get(v, v) if isinstance(v, str) else v) for k, v in resolved["data"].items()}
    resolved.pop("compare", None)
    return resolved


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid`` options (``key.path=v1,v2``; values are YAML, as in ``--set``) -> {key: values}.

    YAML 1.1 reads ``1e-3`` (no dot) as text; a grid value written so is taken as the number.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--grid {item!r} is not key.path=value,value", fix="e.g. --grid adapter.r=8,16")
        if key in grid:
            raise RecipeError(f"grid {key}: given twice", fix=f"give all its values in one --grid {key}=V1,V2")
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError:
            raise RecipeError(f"grid {key}: {text!r} is not a comma-separated list of values", fix="e.g. --grid adapter.r=8,16") from None
        grid[key] = [float(v) if isinstance(v, str) and _EXPONENT.fullmatch(v.strip()) else v for v in values]
    return grid


def plan(recipe: Recipe, stacks: Sequence[str], grid: Mapping[str, Sequence[Any]] | None = None) -> list[Run]:
    """The runs of comparing ``stacks`` of ``recipe`` over ``grid``, in order: each stack (in the order
    asked), then each combination of its settings; every recipe validated. Raises one RecipeError."""
    modality = get_modality(recipe.modality)
    where = recipe.source
    parsed: list[list[str]] = []
    for label in stacks:
        try:
            names = parse_stack(label, modality)
        except RecipeError as exc:
            raise RecipeError(exc.message, path=where, fix=exc.fix) from None
        if names in parsed:
            raise RecipeError(f"stack {stack_label(names)!r} is asked twice", path=where, fix="name each stack once")
        parsed.append(names)
    keys: list[tuple[_Key, list[Any]]] = []
    for given, values in (grid or {}).items():
        key = _key(str(given), modality, where)
        twin = next((k.given for k, _ in keys if k.name == key.name), None)
        if twin is not None:
            raise RecipeError(f"grid {given}: given twice (also as {twin})", path=where)
        keys.append((key, _values(key, values, where)))
        if not any(_applies(key, names, modality) for names in parsed):
            shown = ", ".join(stack_label(n) for n in parsed)
            whom = f"contains {key.strategy}" if key.strategy else "trains" if key.path[0] == "train" else "but base (which runs once)"
            raise RecipeError(f"grid {given}: no stack of this comparison {whom} (stacks: {shown})", path=where,
                              fix="add a stack it applies to (--stacks) or drop the key")
    subs = {stack_label(names): runnable(stack_recipe(recipe, names)) for names in parsed}
    for key, values in keys:  # each value alone first, so that an error names its key
        names = next(n for n in parsed if _applies(key, n, modality))
        for value in values:
            _validated(subs[stack_label(names)], [(key, value)], names, modality, where, f"grid {key.given}={_show(value)}")
    runs: list[Run] = []
    slugs: set[str] = set()
    for names in parsed:
        stack = stack_label(names)
        mine = [(key, values) for key, values in keys if _applies(key, names, modality)]
        short = _short_names([key.name for key, _ in mine])
        for combo in itertools.product(*[values for _, values in mine]):
            chosen = [(key, value) for (key, _), value in zip(mine, combo)]
            shown = ",".join(f"{short[key.name]}={_show(value)}" for key, value in chosen)
            label = f"{stack}[{shown}]" if chosen else stack
            slug = _slug(stack, [(short[key.name], value) for key, value in chosen], label, slugs)
            raw = copy.deepcopy(subs[stack])
            raw["name"] = fit_name(f"{recipe.name}--{slug}")
            sub = _validated(raw, chosen, names, modality, where, f"grid run {label}" if chosen else f"stack {stack}")
            runs.append(Run(stack, {key.name: value for key, value in chosen}, label, slug, sub))
    return runs


def _key(given: str, modality, where: str | None) -> _Key:
    parts = given.split(".")
    if parts[0] == "strategies":
        parts = parts[1:]
    if not parts or any(not p.strip() for p in parts):
        raise RecipeError(f"grid {given!r}: not a key path", path=where, fix="e.g. --grid adapter.r=8,16")
    head = parts[0]
    available = [s for s in STACK_ORDER if s in modality.strategies]
    if head not in SECTIONS and head not in modality.strategies:
        if head in STACK_ORDER:
            raise RecipeError(f"grid {given}: strategy {head} is not available for modality {modality.name!r} "
                              f"(available: {', '.join(available)})", path=where)
        close = difflib.get_close_matches(head, [*available, *SECTIONS], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"grid {given}: {head!r} cannot be swept{hint}", path=where,
                          fix=f"grid keys are <strategy>.<key> ({', '.join(available)}), train.<key> or inference.<key>")
    if len(parts) < 2:
        raise RecipeError(f"grid {given}: name a key inside {head}", path=where, fix=f"e.g. --grid {head}.<key>=V1,V2")
    if head in SECTIONS:
        return _Key(given, ".".join(parts), tuple(parts), None)
    return _Key(given, ".".join(parts), ("strategies", *parts), head)


def _values(key: _Key, values: Any, where: str | None) -> list[Any]:
    if not isinstance(values, (list, tuple)):
        raise RecipeError(f"grid {key.given}: values must be a list (got {values!r})", path=where, fix=f"e.g. {key.given}: [8, 16]")
    if not values:
        raise RecipeError(f"grid {key.given}: no values", path=where, fix=f"give at least one, e.g. --grid {key.given}=V1,V2")
    seen: list[str] = []
    for value in values:
        text = json.dumps(value, sort_keys=True, default=str)
        if text in seen:
            raise RecipeError(f"grid {key.given}: {_show(value)} is given twice", path=where, fix="give each value once")
        seen.append(text)
    return list(values)


def _applies(key: _Key, names: Sequence[str], modality) -> bool:
    if not names:
        return False  # base runs once
    if key.strategy is not None:
        return key.strategy in names
    if key.path[0] == "train":
        return any(modality.strategies[n].trains for n in names)
    return True  # inference


def _validated(raw: dict[str, Any], chosen: Sequence[tuple[_Key, Any]], names: Sequence[str], modality,
               where: str | None, what: str) -> Recipe:
    """``raw`` with the settings of ``chosen`` put in, validated; an error starts with ``what``."""
    raw = copy.deepcopy(raw)
    for key, value in chosen:
        node = raw
        for i, part in enumerate(key.path[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"{what}: {'.'.join(key.path[: i + 1])} is a value, not a section", path=where)
            node = child
        node[key.path[-1]] = value
    for key, _ in chosen:
        if key.path[0] != "train":
            continue
        for n in names:
            own: Any = raw["strategies"].get(n, {}).get("train") if modality.strategies[n].trains else None
            for part in key.path[1:]:
                own = own.get(part) if isinstance(own, dict) else None
            if own is not None:
                rest = ".".join(key.path[1:])
                raise RecipeError(f"{what}: strategies.{n}.train.{rest} ({_show(own)}) overrides {key.name} for {n}",
                                  path=where, fix=f"sweep {n}.train.{rest} instead")
    try:
        return validate_recipe(raw, Path(where) if where else None)
    except RecipeError as exc:
        raise RecipeError(f"{what}: {exc.message}", path=where, fix=exc.fix) from None


def _short_names(names: Sequence[str]) -> dict[str, str]:
    last = [n.rsplit(".", 1)[-1] for n in names]
    return {n: (tail if last.count(tail) == 1 else n) for n, tail in zip(names, last)}


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), default=str)


def _digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:8]


def _slug(stack: str, settings: Sequence[tuple[str, Any]], label: str, taken: set[str]) -> str:
    text = stack.replace("+", "-") + ("--" + "-".join(f"{k}{_show(v)}" for k, v in settings) if settings else "")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "run"
    if slug in taken:
        slug = f"{slug}-{_digest(label)}"
    taken.add(slug)
    return slug
