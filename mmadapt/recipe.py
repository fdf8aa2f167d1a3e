"""Recipes: strict YAML validated against a schema, errors that name the key path.

A recipe is validated in two passes: the shared top level (``name``, ``modality``,
``base_model``, ``train``, ``eval`` ...) here, then the sections whose shape belongs to
the modality (``data``, ``strategies.*``, ``inference``) against the models the
modality registers. Every problem found is reported at once, in one line per recipe:

    recipes/x.yaml: strategies.adapter.rr: unknown key (did you mean 'r'?)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from mmadapt.config import (
    CompareConfig,
    EvalConfig,
    ModelConfig,
    StrictModel,
    TrainConfig,
    fmt_loc,
    read_strict_yaml,
    suggest,
    validation_messages,
)
from mmadapt.errors import RecipeError
from mmadapt.evalspec import check_eval
from mmadapt.guard.config import GuardConfig
from mmadapt.protocols import EXCLUSIVE, STACK_ORDER, get_modality, modality_names, ordered

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
MAX_RECIPE_BYTES = 1 << 20
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")  # owner/name[:split], a data field marked kind="dataset"


class RecipeTop(StrictModel):
    """The shared top level of a recipe (modality sections are checked separately)."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    modality: str = Field(description="a registered modality (mmadapt.protocols.modality_names())")
    base_model: str = Field(min_length=1, max_length=4096)
    model: ModelConfig = Field(default_factory=ModelConfig, description="how the base model is loaded (dtype)")
    data: dict[str, Any]
    strategies: dict[str, Any] = Field(description="the stack; {} evaluates the base model alone (the floor)")
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    inference: dict[str, Any] = Field(default_factory=dict)
    output_dir: str = Field("runs", min_length=1, max_length=4096)
    trust_remote_code: bool = False
    compare: CompareConfig = Field(default_factory=CompareConfig)
    guard: GuardConfig | None = Field(None, description="guardrails (mmadapt.guard); None = off")

    @field_validator("strategies")
    @classmethod
    def _not_null_sections(cls, value: dict[str, Any]) -> dict[str, Any]:
        return {k: ({} if v is None else v) for k, v in value.items()}

    @field_validator("modality")
    @classmethod
    def _registered(cls, value: str) -> str:
        names = modality_names()
        if value not in names:
            raise PydanticCustomError("unknown_modality", "Input should be one of {names}", {"names": ", ".join(map(repr, names))})
        return value


class Recipe(BaseModel):
    """A validated recipe: shared fields plus the modality's parsed sections."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=False)

    name: str
    description: str = ""
    modality: str
    base_model: str
    model: ModelConfig = ModelConfig()
    data: Any
    strategies: dict[str, Any]
    train: TrainConfig
    eval: EvalConfig
    inference: Any
    output_dir: str = "runs"
    trust_remote_code: bool = False
    compare: CompareConfig = CompareConfig()
    guard: GuardConfig | None = None
    compare_strategies: dict[str, Any] = {}  # parsed compare.strategies
    source: str | None = None  # the YAML file it came from
    data_paths: dict[str, str] = {}  # each data path as written -> the absolute path it was found at

    @property
    def stack(self) -> list[str]:
        return ordered(list(self.strategies))

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in, as plain JSON-able data."""
        out = {
            "name": self.name,
            "description": self.description,
            "modality": self.modality,
            "base_model": self.base_model,
            **({"model": self.model.model_dump(mode="json")} if self.model != ModelConfig() else {}),  # hashes of fp32 recipes unchanged
            "data": self.data.model_dump(mode="json"),
            "strategies": {k: self.strategies[k].model_dump(mode="json") for k in self.stack},
            # the memory/speed knobs only when set: hashes of recipes that do not use them unchanged
            "train": {k: v for k, v in self.train.model_dump(mode="json").items()
                      if (v or k not in ("gradient_checkpointing", "packing", "ema")) and (k != "ema_decay" or self.train.ema)},
            "eval": self.eval.model_dump(mode="json", exclude={"suites"} if not self.eval.suites else None),
            "inference": self.inference.model_dump(mode="json"),
            "output_dir": self.output_dir,
            "trust_remote_code": self.trust_remote_code,
            "compare": {
                "stacks": self.compare.stacks,
                "strategies": {k: v.model_dump(mode="json") for k, v in self.compare_strategies.items()},
                **({"grid": self.compare.grid} if self.compare.grid else {}),  # only when set: hashes of the rest unchanged
            },
        }
        if self.guard is not None:  # only when set: hashes of unguarded recipes unchanged
            out["guard"] = self.guard.model_dump(mode="json")
        return out

    def hash(self) -> str:
        """sha256 of the resolved recipe (what changes results, not where it was read from)."""
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()

    def with_stack(self, names: Sequence[str]) -> Recipe:
        """A copy of this recipe restricted to (or extended with default) strategies ``names``."""
        modality = get_modality(self.modality)
        strategies = {}
        for name in names:
            if name in self.strategies:
                strategies[name] = self.strategies[name]
            elif name in self.compare_strategies:
                strategies[name] = self.compare_strategies[name]
            else:
                strategies[name] = modality.strategies[name].config_model()
        return self.model_copy(update={"strategies": strategies})

    def path(self, value: str | None) -> Path | None:
        """A data path of this recipe as an absolute Path (None stays None)."""
        if value is None:
            return None
        return Path(self.data_paths.get(value, value))


def parse_stack(text: str, modality) -> list[str]:
    """'prompt+retrieval+adapter' -> ['prompt', 'retrieval', 'adapter'] (validated); 'base' -> []."""
    text = str(text).strip()
    if text == "base":
        return []
    names = [n.strip() for n in text.split("+") if n.strip()]
    valid = [s for s in STACK_ORDER if s in modality.strategies]
    for name in names:
        if name not in modality.strategies:
            raise RecipeError(f"unknown strategy {name!r} in stack {text!r}{suggest(name, valid)}")
    if len(set(names)) != len(names) or not names:
        raise RecipeError(f"stack {text!r} must name each strategy once, joined by '+', or be 'base'")
    for group in EXCLUSIVE:
        if len(group & set(names)) > 1:
            raise RecipeError(f"stack {text!r}: {' and '.join(sorted(group))} cannot be in one stack")
    return ordered(names)


def stack_label(names: Sequence[str]) -> str:
    return "+".join(ordered(list(names))) if names else "base"


# ---------------------------------------------------------------- YAML loading


def read_yaml(path: Path) -> Any:
    """Parse a recipe YAML file strictly; every failure is a one-line RecipeError naming the file."""
    return read_strict_yaml(path, what="recipe", error=RecipeError, fix_missing="check the path (run from the project root?)",
                            max_bytes=MAX_RECIPE_BYTES)


# ---------------------------------------------------------------- overrides


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw recipe mapping."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r} is not key.path=value", fix="e.g. --set train.steps=50")
        try:
            parsed = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            parsed = value
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError(f"override {key}: {part!r} is not a section", fix="override a leaf key")
            node = child
        node[parts[-1]] = parsed
    return raw


# ---------------------------------------------------------------- validation


def _validate_section(model: type[BaseModel], value: Any, prefix: Sequence[Any], errors: list[str]) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.append(f"{fmt_loc(prefix, ())}: must be a mapping of keys, got {type(value).__name__}")
        return None
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        errors.extend(validation_messages(exc, model, prefix))
        return None


def _resolve_data_path(value: str, root_candidates: Sequence[Path]) -> Path | None:
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for root in root_candidates:
        if (root / p).exists():
            return (root / p).resolve()
    return None


def _root_candidates(source: Path | None) -> list[Path]:
    roots = [Path.cwd()]
    if source is not None:
        here = source.resolve().parent
        roots.extend([here, *here.parents])
    return roots


def _validate_strategies(sections: dict[str, Any], modality, modality_name: str, prefix: tuple, errors: list[str]) -> dict[str, Any]:
    parsed_all: dict[str, Any] = {}
    where = ".".join(prefix)
    for name, section in sections.items():
        name = str(name)
        if name not in modality.strategies:
            valid = [s for s in STACK_ORDER if s in modality.strategies]
            if name in STACK_ORDER:
                errors.append(f"{where}.{name}: not available for modality {modality_name!r} (available: {', '.join(valid)})")
            else:
                errors.append(f"{where}.{name}: unknown strategy{suggest(name, valid)}")
            continue
        parsed = _validate_section(modality.strategies[name].config_model, section, (*prefix, name), errors)
        if parsed is not None:
            parsed_all[name] = parsed
    return parsed_all


def validate_recipe(raw: Any, source: Path | None = None) -> Recipe:
    """Validate a raw mapping (from YAML) into a :class:`Recipe`, or raise one RecipeError with every problem."""
    where = source if source is not None else "<recipe>"
    if raw is None:
        raise RecipeError("recipe is empty", path=where, fix="start from a recipe in recipes/")
    if not isinstance(raw, dict):
        raise RecipeError(
            f"a recipe is a mapping of keys, got {type(raw).__name__}", path=where, fix="start from a recipe in recipes/"
        )
    errors: list[str] = []
    try:
        top = RecipeTop.model_validate(raw)
    except ValidationError as exc:
        errors.extend(validation_messages(exc, RecipeTop, ()))
        top = None
    if top is None:
        raise RecipeError("; ".join(errors), path=where)

    modality = get_modality(top.modality)
    data = _validate_section(modality.data_model, top.data, ("data",), errors)
    inference = _validate_section(modality.inference_model, top.inference, ("inference",), errors)

    strategies = _validate_strategies(top.strategies, modality, top.modality, ("strategies",), errors)
    compare_strategies = _validate_strategies(top.compare.strategies, modality, top.modality, ("compare", "strategies"), errors)
    for group in EXCLUSIVE:
        both = sorted(group & set(top.strategies))
        if len(both) > 1:
            errors.append(f"strategies: {' and '.join(both)} cannot be in one stack (pick one)")

    for i, stack in enumerate(top.compare.stacks or []):
        try:
            parse_stack(stack, modality)
        except RecipeError as exc:
            errors.append(f"compare.stacks[{i}]: {exc}")

    errors.extend(check_eval(top.eval, modality, source))  # metrics (a user's package.module:fn), bars, suites
    if top.guard is not None and top.guard.escalates and not modality.guard_surface.escalation:
        errors.append(f"guard.escalation: the {top.modality} modality's predictions carry no escalation signals (remove guard.escalation)")

    data_paths: dict[str, str] = {}
    if data is not None:
        roots = _root_candidates(source)
        for key, value in data.model_dump().items():
            extra = type(data).model_fields[key].json_schema_extra if key in type(data).model_fields else None
            kind = extra.get("kind") if isinstance(extra, dict) else None  # "setting": not a path; "dataset": a path or a hub id
            if not isinstance(value, str) or kind == "setting":
                continue
            found = _resolve_data_path(value, roots)
            if found is None and kind == "dataset" and HUB_ID.fullmatch(value):
                continue  # a hub dataset id: the modality's parser loads it where a hub answers, or says why not
            if found is None:
                errors.append(
                    f"data.{key}: {value!r} does not exist (relative paths are read from the current folder"
                    " or the recipe's folder and its parents)"
                )
            else:
                data_paths[value] = str(found)

    if errors:
        raise RecipeError("; ".join(errors), path=where)
    return Recipe(
        name=top.name,
        description=top.description,
        modality=top.modality,
        base_model=top.base_model,
        model=top.model,
        data=data,
        strategies={k: strategies[k] for k in ordered(list(strategies))},
        train=top.train,
        eval=top.eval,
        inference=inference,
        output_dir=top.output_dir,
        trust_remote_code=top.trust_remote_code,
        compare=top.compare,
        guard=top.guard,
        compare_strategies=compare_strategies,
        source=str(source) if source is not None else None,
        data_paths=data_paths,
    )


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read, override and validate a recipe YAML file."""
    source = Path(path)
    raw = read_yaml(source)
    if overrides:
        if not isinstance(raw, dict):
            raise RecipeError("a recipe is a mapping of keys", path=source)
        try:
            raw = apply_overrides(raw, overrides)
        except RecipeError as exc:
            raise RecipeError(str(exc), path=source) from None
    return validate_recipe(raw, source)


def recipe_from_resolved(resolved: dict[str, Any], data_paths: dict[str, str] | None = None) -> Recipe:
    """Rebuild a Recipe from a manifest's resolved recipe (paths are not re-checked)."""
    modality = get_modality(resolved["modality"])
    top = RecipeTop.model_validate(resolved)
    return Recipe(
        name=top.name,
        description=top.description,
        modality=top.modality,
        base_model=top.base_model,
        model=top.model,
        data=modality.data_model.model_validate(top.data),
        strategies={k: modality.strategies[k].config_model.model_validate(v or {}) for k, v in top.strategies.items()},
        train=top.train,
        eval=top.eval,
        inference=modality.inference_model.model_validate(top.inference),
        output_dir=top.output_dir,
        trust_remote_code=top.trust_remote_code,
        compare=top.compare,
        guard=top.guard,
        compare_strategies={
            k: modality.strategies[k].config_model.model_validate(v or {}) for k, v in top.compare.strategies.items()
        },
        data_paths=dict(data_paths or {}),
    )
