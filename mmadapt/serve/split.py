"""A/B traffic split of ``mmadapt serve``: a recipe's requests shared between versions by weight.

``--split zentrix=v0003:90,v0004:10`` (the library takes ``{"zentrix": {"v0003": 90, "v0004": 10}}``)
sends a request for ``zentrix`` to v0003 or v0004. A request with a user (the body's ``user`` or
the ``x-user`` header) is sticky: the sha256 of ``recipe:user`` picks a bucket in [0, 1), so a
user always gets the same version while the split stands. A request without a user draws from a
random generator seeded at start (reproducible runs of a test). A request for ``recipe@vNNNN``
bypasses the split.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Mapping
from pathlib import Path

from mmadapt.engine.versions import versions
from mmadapt.errors import MmadaptError


def parse_split(options: tuple[str, ...] | list[str]) -> dict[str, dict[str, float]]:
    """``["name=v0001:90,v0002:10", ...]`` -> ``{"name": {"v0001": 90.0, "v0002": 10.0}}`` (one-line errors)."""
    out: dict[str, dict[str, float]] = {}
    for option in options:
        name, sep, shares = option.partition("=")
        if not sep or not name.strip() or not shares.strip():
            raise MmadaptError(f"--split {option!r} is not RECIPE=VERSION:WEIGHT,...", fix="e.g. --split zentrix=v0003:90,v0004:10")
        weights: dict[str, float] = {}
        for part in shares.split(","):
            version, sep, weight = part.strip().partition(":")
            try:
                value = float(weight)
            except ValueError:
                value = None
            if not sep or not version or value is None:
                raise MmadaptError(f"--split {option!r}: {part.strip()!r} is not VERSION:WEIGHT", fix="e.g. v0003:90")
            weights[version] = weights.get(version, 0.0) + value
        out[name.strip()] = weights
    return out


def bucket(recipe: str, user: str) -> float:
    """A user's place in [0, 1) for ``recipe``: the same every time (sha256, not Python's salted hash)."""
    digest = hashlib.sha256(f"{recipe}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Split:
    """The versions of one recipe and their weights; :meth:`choose` picks one for a request."""

    def __init__(self, recipe: str, weights: Mapping[str, float], *, seed: int = 0):
        self.recipe = recipe
        self.weights = {v: float(w) for v, w in weights.items() if float(w) > 0}
        total = sum(self.weights.values())
        self.edges: list[tuple[float, str]] = []
        running = 0.0
        for version, weight in self.weights.items():
            running += weight / total
            self.edges.append((running, version))
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def choose(self, user: str | None) -> str:
        if user:
            point = bucket(self.recipe, user)
        else:
            with self._lock:
                point = self._rng.random()
        for edge, version in self.edges:
            if point < edge:
                return version
        return self.edges[-1][1]  # rounding at the top edge


def validate_split(split: Mapping[str, Mapping[str, float]], recipe_dirs: Mapping[str, Path], *, seed: int = 0) -> dict[str, Split]:
    """Check a split against the served recipes and their versions on disk; one-line errors."""
    out: dict[str, Split] = {}
    for name, weights in split.items():
        if name not in recipe_dirs:
            raise MmadaptError(f"--split names {name!r}, which is not served", fix=f"serve it too, or split one of: {', '.join(recipe_dirs)}")
        rdir = recipe_dirs[name]
        if not weights:
            raise MmadaptError(f"--split {name}: no versions", fix=f"e.g. --split {name}=v0001:90,v0002:10")
        for version, weight in weights.items():
            if float(weight) < 0:
                raise MmadaptError(f"--split {name}: weight {weight} of {version} is negative", fix="weights are >= 0")
            if version not in versions(rdir):
                known = ", ".join(versions(rdir)) or "none"
                raise MmadaptError(f"--split {name}: no version {version!r}", path=rdir, fix=f"pick from: {known}")
        if sum(float(w) for w in weights.values()) <= 0:
            raise MmadaptError(f"--split {name}: the weights sum to 0", fix="give at least one version a weight > 0")
        out[name] = Split(name, weights, seed=seed)
    return out
