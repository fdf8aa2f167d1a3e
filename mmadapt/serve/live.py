"""Which version answers a request, kept in step with the registry while serving.

A request's ``model`` names a recipe (its ``current`` version, or its split's choice) or pins
``recipe@vNNNN``. :meth:`Router.watch` re-reads every recipe's ``current`` pointer about every
``poll_seconds``: when it moved (``mmadapt registry promote`` / ``rollback``, a new run of a recipe
without bars) the new version is loaded first and then swapped in with one assignment, so the next
request gets it while requests already running finish on the version they started with. A
version that fails to load is reported once and the old one keeps answering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mmadapt.engine.versions import VERSION_RE, current_version, versions
from mmadapt.errors import ArtifactError
from mmadapt.serve.pool import Loaded, Pool
from mmadapt.serve.split import Split

log = logging.getLogger("mmadapt.serve")


class UnknownModel(Exception):
    """The request's ``model`` names no served recipe or no version of one (HTTP 404)."""


@dataclass(frozen=True)
class Route:
    recipe: str
    version_dir: Path
    how: str  # "current" | "split" | "pinned"


class Router:
    def __init__(self, recipe_dirs: Mapping[str, Path], pool: Pool, splits: Mapping[str, Split] | None = None,
                 *, poll_seconds: float = 0.5):
        self.recipe_dirs = dict(recipe_dirs)
        self.pool = pool
        self.splits = dict(splits or {})
        self.poll_seconds = poll_seconds
        self.current: dict[str, Path] = {}  # recipe -> the version folder that answers it now
        self.switches: list[tuple[str, str | None, str]] = []  # (recipe, from, to), for /v1/models and tests
        self._failed: set[Path] = set()
        for name, rdir in self.recipe_dirs.items():
            if current_version(rdir) is None:
                raise ArtifactError(f"{name} has no version to serve", path=rdir, fix="run the recipe first: mmadapt run RECIPE")
        self.refresh()

    # ---- the registry, watched
    def refresh(self) -> list[tuple[str, str | None, str]]:
        """Load and switch to every moved ``current``; keep the split's versions loaded. Blocking."""
        moved = []
        for name, rdir in self.recipe_dirs.items():
            version = current_version(rdir)
            if version is None:
                continue
            target = rdir / version
            before = self.current.get(name)
            if before == target or target in self._failed:
                continue
            try:
                self.pool.get(target)  # load before switching
            except Exception as exc:  # noqa: BLE001 - a bad version must not stop the server or the old version
                self._failed.add(target)
                log.error("cannot load %s@%s, still serving %s: %s", name, version, before and before.name, exc)
                if before is None:
                    raise
                continue
            self.current[name] = target  # one assignment: the next request sees the new version
            moved.append((name, before.name if before else None, version))
            if before is not None:
                log.warning("%s: now serving %s (was %s)", name, version, before.name)
        for name, split in self.splits.items():
            for version in split.weights:
                self.pool.get(self.recipe_dirs[name] / version)
        self.pool.keep(self.kept())
        self.pool.evict()
        self.switches.extend(moved)
        return moved

    def kept(self) -> list[Path]:
        dirs = list(self.current.values())
        for name, split in self.splits.items():
            dirs += [self.recipe_dirs[name] / v for v in split.weights]
        return dirs

    async def watch(self) -> None:
        """Poll the registry until cancelled (the app's lifespan runs this)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                checked = loop.run_in_executor(None, self.refresh)
            except RuntimeError:  # the loop's executor is shut down: the server is stopping
                return
            try:
                await checked
            except Exception:  # noqa: BLE001 - keep watching; the error is logged
                log.exception("registry check failed")

    # ---- a request
    def route(self, model: str | None, user: str | None) -> Route:
        if not isinstance(model, str) or not model:
            raise UnknownModel("`model` is required: a served recipe name or RECIPE@vNNNN")
        name, _, version = model.partition("@")
        rdir = self.recipe_dirs.get(name)
        if rdir is None:
            raise UnknownModel(f"the model {model!r} is not served here (served: {', '.join(self.recipe_dirs)})")
        if version:
            if not VERSION_RE.match(version) or version not in versions(rdir):
                raise UnknownModel(f"{name} has no version {version!r} (versions: {', '.join(versions(rdir)) or 'none'})")
            return Route(name, rdir / version, "pinned")
        if name in self.splits:
            return Route(name, rdir / self.splits[name].choose(user), "split")
        return Route(name, self.current[name], "current")

    async def loaded(self, route: Route) -> Loaded:
        """The loaded version of a route (a pinned version not in the cache is loaded off the event loop)."""
        cached = self.pool.cached(route.version_dir)
        return cached if cached is not None else await asyncio.to_thread(self.pool.get, route.version_dir)
