"""Errors a user can act on.

Every error raised for bad input (recipe, dataset, audio, image, model path) is a
``MmadaptError``: one line that names the file and the fix. The CLI prints it
without a traceback and exits with code 2.
"""

from __future__ import annotations


class MmadaptError(Exception):
    """A user-facing error: one line, names the file and the fix; CLI exit code 2."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, fix: str | None = None):
        self.path = str(path) if path is not None else None
        self.message = message
        self.fix = fix
        parts = [f"{self.path}: {message}" if self.path else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" — ".join(parts).replace("\n", " "))


class RecipeError(MmadaptError):
    """The recipe YAML is malformed or does not match the schema."""


class DataError(MmadaptError):
    """A dataset file (jsonl, audio, image, knowledge base) is missing or malformed."""


class ModelError(MmadaptError):
    """A model reference cannot be resolved or loaded."""


class ArtifactError(MmadaptError):
    """An artifact or registry entry is missing, corrupt or cannot be written."""


class RequestError(MmadaptError):
    """A serve request a modality cannot take (no user message, no prompt, an unsupported option): HTTP 400.

    ``param`` names the request field at fault and ``code`` is OpenAI's error code (e.g.
    ``context_length_exceeded``); the server puts both in the error body."""

    def __init__(self, message: str, *, path: str | None = None, fix: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message, path=path, fix=fix)
        self.param, self.code = param, code


class SuiteError(MmadaptError):
    """An evaluation suite file (eval/*.yaml) is malformed, or a target does not fit it."""
