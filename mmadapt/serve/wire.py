"""The OpenAI wire format of ``mmadapt serve`` and the checks made before a model sees a request.

Error bodies are OpenAI's: ``{"error": {"message", "type", "param", "code"}}`` (``param``: the field at fault, or null). The limits are shared by
every endpoint and read only the request's fields: ``max_tokens`` / ``max_completion_tokens``,
``n``, ``temperature``, ``top_p``, ``seed`` and the total length of the text in the request; the body size is limited before the body
is parsed (:class:`BodyLimit`, an ASGI middleware: 413).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 25 * 2**20  # OpenAI's audio upload limit
    max_tokens: int = 4096  # largest max_tokens / max_completion_tokens a request may ask for
    max_n: int = 4  # most images (or chat choices) one request may ask for
    max_prompt_chars: int = 32_000  # all text of a request together


class ApiError(Exception):
    """An answer other than 200, shaped as OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 headers: dict[str, str] | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers or {}

    def response(self, extra_headers: dict[str, str] | None = None) -> JSONResponse:
        return error_response(self.status, self.message, type=self.type, code=self.code, param=self.param,
                              headers={**self.headers, **(extra_headers or {})})


def error_response(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                   headers: dict[str, str] | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status, headers=headers)


def check_key(authorization: str | None, api_key: str) -> None:
    """401 unless the header is ``Bearer <api_key>`` (compared in constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise ApiError(401, "a valid API key is required: send the header Authorization: Bearer KEY",
                       type="invalid_request_error", code="invalid_api_key")


def _int_field(fields: dict[str, Any], key: str) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or float(value) != int(float(value)):
            raise ValueError
        return int(float(value))
    except (TypeError, ValueError):
        raise ApiError(400, f"`{key}` must be an integer, not {value!r}", code="invalid_value", param=key) from None


def _number_field(fields: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"`{key}` must be a number, not {value!r}", code="invalid_value", param=key) from None
    if not low <= number <= high:
        raise ApiError(400, f"`{key}` {value} is outside {low:g}..{high:g}", code="invalid_value", param=key)
    return number


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_length(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    return 0


def check_limits(fields: dict[str, Any], limits: ServeLimits) -> None:
    """400 when a request asks for more tokens, more outputs or more text than the server allows, or
    for sampling settings outside OpenAI's ranges (``temperature`` 0..2, ``top_p`` 0..1, an integer
    ``seed``). The values read are written back as numbers (a form's text fields arrive as strings).
    What depends on the loaded model (a chat model's context length) is the modality's check:
    :meth:`~mmadapt.protocols.Modality.serve_check`."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = _int_field(fields, key)
        if value is not None and not 1 <= value <= limits.max_tokens:
            raise ApiError(400, f"`{key}` {value} is outside 1..{limits.max_tokens} (the server's --max-tokens)",
                           code="limit_exceeded", param=key)
        if value is not None:
            fields[key] = value
    for key, high in (("temperature", 2.0), ("top_p", 1.0)):
        if (number := _number_field(fields, key, 0.0, high)) is not None:
            fields[key] = number
    if (seed := _int_field(fields, "seed")) is not None:
        fields["seed"] = seed
    n = _int_field(fields, "n")
    if n is not None:
        if not 1 <= n <= limits.max_n:
            raise ApiError(400, f"`n` {n} is outside 1..{limits.max_n}", code="limit_exceeded", param="n")
        fields["n"] = n
    chars = _text_length({k: v for k, v in fields.items() if k not in ("model", "user")})
    if chars > limits.max_prompt_chars:
        raise ApiError(400, f"the request holds {chars} characters of text, more than {limits.max_prompt_chars}", code="limit_exceeded")


def chat_chunks(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat completion as the chunks of a stream: each choice's whole answer as one delta, then
    a chunk with its finish reason (generation is done before the stream starts)."""
    head = {k: body[k] for k in ("id", "created", "model") if k in body}
    head["object"] = "chat.completion.chunk"
    chunks = []
    for choice in body.get("choices", []):
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content", "")}
        chunks.append({**head, "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": None}],
                       "mmadapt": body.get("mmadapt")})
    for choice in body.get("choices", []):
        chunks.append({**head, "choices": [{"index": choice.get("index", 0), "delta": {},
                                            "finish_reason": choice.get("finish_reason", "stop")}]})
    return chunks


def sse(chunks: list[dict[str, Any]]):
    """Server-sent events: ``data: {json}`` per chunk, then ``data: [DONE]``."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before anything parses it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._reject(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # later calls wait for the disconnect, as usual

        return await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, f"the request body is larger than {self.max_bytes} bytes", code="request_too_large",
                                  headers={"connection": "close"})
        await response(scope, receive, send)
