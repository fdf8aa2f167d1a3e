"""``mmadapt serve``: the current version of each recipe behind OpenAI-compatible endpoints.

    app = create_app(["runs/zentrix-support", "runs/speech-domain-vocab"], api_key="k")
    run_server(app, host="127.0.0.1", port=8000)

Endpoints: ``POST /v1/chat/completions`` (stream or not), ``POST /v1/audio/transcriptions``
(multipart ``file``), ``POST /v1/images/generations`` (base64 PNGs), ``GET /v1/models`` and
``POST /v1/feedback``; the dashboard at ``/`` (:mod:`mmadapt.serve.dashboard`). Which endpoint a recipe answers is its modality's ``api_endpoint``; the
modality turns a request into predictor inputs and predictions into the body
(``Modality.serve_inputs`` / ``serve_payload``), so nothing here knows a modality. Every answer
names its version: the ``x-mmadapt-version: recipe@vNNNN`` header, the body's ``model`` and
``mmadapt.version``; its id is ``x-request-id`` and ``mmadapt.id`` (what feedback names).
Routing and the live registry: :mod:`mmadapt.serve.live`; the worker and queue of each loaded
version: :mod:`mmadapt.serve.pool`; the logs: :mod:`mmadapt.serve.log`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from mmadapt.engine.versions import versions
from mmadapt.errors import MmadaptError, RequestError
from mmadapt.protocols import ServeRequest
from mmadapt.serve.dashboard import render
from mmadapt.serve.live import Route, Router, UnknownModel
from mmadapt.serve.log import ServeLog, now_iso
from mmadapt.serve.pool import Evicted, Pool, QueueFull
from mmadapt.serve.split import validate_split
from mmadapt.serve.wire import ApiError, BodyLimit, ServeLimits, chat_chunks, check_key, check_limits, error_response, sse

log = logging.getLogger("mmadapt.serve")
VERSION_HEADER = "x-mmadapt-version"
STREAMING_ENDPOINT = "chat.completions"  # the one endpoint with an OpenAI stream form


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_host(host: str, api_key: str | None) -> None:
    """Refuse (one line) to listen beyond loopback without an API key."""
    if not is_loopback(host) and not api_key:
        raise MmadaptError(f"refusing to serve on {host} (not loopback) without an API key",
                           fix="pass --api-key KEY (clients send Authorization: Bearer KEY), or serve on 127.0.0.1")


def create_app(
    recipes: Sequence[str | Path] | Mapping[str, str | Path],
    *,
    api_key: str | None = None,
    require_key: bool | None = None,
    split: Mapping[str, Mapping[str, float]] | None = None,
    limits: ServeLimits | None = None,
    max_queue: int = 8,
    max_batch: int = 16,
    share_base: bool = True,
    cache_size: int = 4,
    redact_inputs: bool = False,
    poll_seconds: float = 0.5,
    seed: int = 0,
) -> FastAPI:
    """The app serving each recipe folder (``<output_dir>/<name>``; a mapping names them).

    Loads every recipe's current version (and its split's versions) before returning, so a bad
    recipe, split or version fails here, as one line. ``require_key`` (default: whether an
    ``api_key`` is given) makes every endpoint answer 401 without ``Authorization: Bearer KEY``.
    """
    items = recipes.items() if isinstance(recipes, Mapping) else ((Path(r).name, r) for r in recipes)
    recipe_dirs = {name: Path(folder) for name, folder in items}
    if not recipe_dirs:
        raise MmadaptError("no recipe to serve", fix="name at least one recipe")
    require_key = bool(api_key) if require_key is None else require_key
    if require_key and not api_key:
        raise MmadaptError("an API key is required but none was given", fix="pass --api-key KEY")
    limits = limits or ServeLimits()
    splits = validate_split(split or {}, recipe_dirs, seed=seed)
    pool = Pool(max_queue=max_queue, cache_size=max(cache_size, 1), max_batch=max_batch, share_base=share_base)
    router = Router(recipe_dirs, pool, splits, poll_seconds=poll_seconds)
    serve_log = ServeLog(recipe_dirs, redact_inputs=redact_inputs)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        watcher = asyncio.create_task(router.watch())
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.to_thread(pool.close)  # in-flight predictions finish
            serve_log.close()

    app = FastAPI(title="mmadapt serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.router, app.state.pool, app.state.log, app.state.limits = router, pool, serve_log, limits

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if require_key:
            try:
                check_key(request.headers.get("authorization"), api_key or "")
            except ApiError as exc:
                return exc.response()
        return await call_next(request)

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)  # outermost: before anything reads the body

    async def answer(request: Request, endpoint: str) -> Response:
        return await _answer(request, endpoint, router, serve_log, limits)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await answer(request, "chat.completions")

    @app.post("/v1/audio/transcriptions")
    async def audio_transcriptions(request: Request) -> Response:
        return await answer(request, "audio.transcriptions")

    @app.post("/v1/images/generations")
    async def images_generations(request: Request) -> Response:
        return await answer(request, "images.generations")

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(await asyncio.to_thread(render, router))

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": _models(router)})

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> JSONResponse:
        body = await _json(request)
        request_id, score = body.get("id"), body.get("score")
        if not isinstance(request_id, str) or isinstance(score, bool) or not isinstance(score, int | float):
            return error_response(400, "feedback is {\"id\": REQUEST_ID, \"score\": NUMBER, \"comment\"?: TEXT}", code="invalid_value")
        comment = body.get("comment")
        entry = await asyncio.to_thread(serve_log.feedback, request_id, float(score), comment if isinstance(comment, str) else None)
        if entry is None:
            return error_response(404, f"no request {request_id!r} in the served recipes' logs", code="unknown_request")
        return JSONResponse({"ok": True, **entry})

    return app


def run_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, graceful_seconds: float = 30.0) -> None:
    """Serve ``app`` with uvicorn until SIGINT/SIGTERM; requests in flight then finish (up to ``graceful_seconds``)."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="info",
                                  timeout_graceful_shutdown=graceful_seconds)).run()


# ---------------------------------------------------------------- one request


async def _json(request: Request) -> dict[str, Any]:
    def no_constants(name: str):  # NaN / Infinity are not JSON: they would make the log's lines unreadable to strict readers
        raise ValueError(f"{name} is not a JSON number")

    try:
        body = json.loads(await request.body(), parse_constant=no_constants)
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


async def _read(request: Request) -> tuple[dict[str, Any], Path | None, dict[str, Any] | None]:
    """The request's fields, the uploaded file (in a temporary file) and what the log says of it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _json(request), None, None
    fields: dict[str, Any] = {}
    upload = info = None
    try:
        async with request.form() as form:
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields[key] = value
                elif upload is None:  # the first file; OpenAI's endpoints take one
                    data = await value.read()
                    handle, name = tempfile.mkstemp(prefix="mmadapt-upload-", suffix=Path(value.filename or "").suffix[:16])
                    upload = Path(name)
                    with os.fdopen(handle, "wb") as out:
                        out.write(data)
                    info = {"name": value.filename, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    except Exception as exc:
        if upload is not None:
            upload.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise
        raise ApiError(400, f"the multipart body cannot be read: {exc}", code="invalid_multipart") from None
    return fields, upload, info


async def _answer(request: Request, endpoint: str, router: Router, serve_log: ServeLog, limits: ServeLimits) -> Response:
    started, arrived = time.perf_counter(), now_iso()
    request_id = f"req-{uuid.uuid4().hex}"
    upload: Path | None = None
    try:
        try:
            fields, upload, upload_info = await _read(request)
            user = fields.get("user") if isinstance(fields.get("user"), str) else request.headers.get("x-user")
            route = router.route(fields.get("model"), user)
        except UnknownModel as exc:
            return error_response(404, str(exc), code="model_not_found")
        except ApiError as exc:
            return exc.response()
        entry = {"id": request_id, "time": arrived, "recipe": route.recipe, "version": route.version_dir.name,
                 "route": route.how, "endpoint": endpoint, "user": user, "status": 200, "latency_ms": None,
                 "stream": fields.get("stream") is True and endpoint == STREAMING_ENDPOINT,
                 "input": {k: v for k, v in fields.items() if k not in ("model", "user")}, "output": None, "error": None}
        if upload_info is not None:
            entry["input"]["file"] = upload_info
        headers = {VERSION_HEADER: f"{route.recipe}@{route.version_dir.name}", "x-request-id": request_id}
        try:
            body = await _predict(route, router, ServeRequest(fields, upload), endpoint, limits, serve_log, request_id, entry)
        except ApiError as exc:
            return _logged_error(serve_log, entry, started, exc, headers)
        except QueueFull:
            return _logged_error(serve_log, entry, started, ApiError(
                429, f"{headers[VERSION_HEADER]} has {router.pool.max_queue} requests waiting already; retry later",
                type="rate_limit_error", code="queue_full"), headers)
        except MmadaptError as exc:  # the modality's RequestError, an undecodable upload ...
            message = str(exc).replace(str(upload), entry["input"].get("file", {}).get("name") or "upload") if upload else str(exc)
            param, code = (exc.param, exc.code) if isinstance(exc, RequestError) else (None, None)
            return _logged_error(serve_log, entry, started, ApiError(400, message, code=code or "invalid_input", param=param), headers)
        except Exception as exc:  # noqa: BLE001 - any failure is a 500 in OpenAI's shape, and logged
            log.exception("request %s failed", request_id)
            return _logged_error(serve_log, entry, started, ApiError(500, f"the model failed: {type(exc).__name__}: {exc}",
                                                                     type="server_error", code="internal_error"), headers)
        entry["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
        await asyncio.to_thread(serve_log.request, route.recipe, entry)
        if entry["stream"]:
            return StreamingResponse(sse(chat_chunks(body)), media_type="text/event-stream", headers=headers)
        return JSONResponse(body, headers=headers)
    finally:
        if upload is not None:
            upload.unlink(missing_ok=True)


async def _predict(route: Route, router: Router, serve_request: ServeRequest, endpoint: str, limits: ServeLimits,
                   serve_log: ServeLog, request_id: str, entry: dict[str, Any]) -> dict[str, Any]:
    try:
        loaded = await router.loaded(route)
    except Exception as exc:  # noqa: BLE001 - a pinned version that does not load is the server's failure, not the client's
        raise ApiError(500, f"cannot load {route.recipe}@{route.version_dir.name}: {exc}", type="server_error",
                       code="model_unavailable") from exc
    modality = loaded.modality
    if modality.api_endpoint != endpoint:
        raise ApiError(400, f"{route.recipe} answers /v1/{modality.api_endpoint.replace('.', '/')}, not /v1/{endpoint.replace('.', '/')}",
                       code="wrong_endpoint")
    check_limits(serve_request.fields, limits)
    inputs = modality.serve_inputs(serve_request)
    await asyncio.to_thread(modality.serve_check, inputs, serve_request, loaded.artifact.stack)  # e.g. the model's context
    for _attempt in range(2):
        try:
            predictions = await loaded.submit(inputs)
            break
        except Evicted:  # dropped from the cache between routing and now: load it again
            loaded = await asyncio.to_thread(router.pool.get, route.version_dir)
    else:  # pragma: no cover - evicted twice in a row
        raise ApiError(503, "the version was unloaded twice; retry", type="server_error", code="unavailable")
    payload = modality.serve_payload(predictions, serve_request)
    files = serve_log.files_dir(route.recipe, request_id)
    entry["output"] = await asyncio.to_thread(lambda: [modality.output_json(p.output, i, files) for i, p in enumerate(predictions)])
    label = loaded.label
    extra = payload.pop("mmadapt", None) or {}
    guard = [p.info["guard"] for p in predictions if "guard" in p.info]  # a guarded recipe's outcomes (mmadapt.guard)
    if guard:
        extra["guard"] = entry["guard"] = guard
    return {"id": request_id, "created": int(time.time()), **payload, "model": label, "mmadapt": {**extra, "version": label, "id": request_id}}


def _logged_error(serve_log: ServeLog, entry: dict[str, Any], started: float, exc: ApiError, headers: dict[str, str]) -> Response:
    entry.update(status=exc.status, error=exc.message, latency_ms=round((time.perf_counter() - started) * 1000, 1))
    serve_log.request(entry["recipe"], entry)
    return exc.response(headers)


def _models(router: Router) -> list[dict[str, Any]]:
    """Each recipe (``id`` = its name: what answers now) and each of its versions (``name@vNNNN``)."""
    out = []
    for name, rdir in router.recipe_dirs.items():
        current = router.current[name]
        loaded = router.pool.cached(current)
        split = router.splits.get(name)
        created = int((current / "manifest.json").stat().st_mtime)
        out.append({"id": name, "object": "model", "created": created, "owned_by": "mmadapt",
                    "mmadapt": {"current": current.name, "endpoint": loaded.modality.api_endpoint if loaded else None,
                                "split": dict(split.weights) if split else None}})
        for version in versions(rdir):
            manifest = rdir / version / "manifest.json"
            out.append({"id": f"{name}@{version}", "object": "model", "created": int(manifest.stat().st_mtime),
                        "owned_by": "mmadapt", "mmadapt": {"current": version == current.name,
                                                           "loaded": router.pool.cached(rdir / version) is not None}})
    return out
