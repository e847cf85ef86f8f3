"""Exceptions a user can act on. The server maps them to HTTP status codes (see server/errors)."""

from __future__ import annotations


class LiteSrtError(Exception):
    """Base class of every error lite_srt raises on purpose."""


class ModelLoadError(LiteSrtError):
    """Weights or config could not be loaded (names the file or tensor)."""


class MissingFileError(ModelLoadError, FileNotFoundError):
    """A file the model needs is not there."""


class CorruptFileError(ModelLoadError):
    """A weights file is truncated or its header is invalid."""


class UnsupportedArchitectureError(ModelLoadError):
    """config.json names an architecture the registry does not know."""


class UnsupportedQuantTypeError(ModelLoadError):
    """A GGUF tensor uses a quantization type lite_srt cannot dequantize."""


class ShapeMismatchError(ModelLoadError):
    """A checkpoint tensor's shape differs from the model parameter it loads into."""


class DefaultModelUnavailableError(LiteSrtError):
    """The default model is not cached and could not be fetched."""


class TokenizerError(LiteSrtError):
    """The tokenizer could not be built or a chat template failed to render."""


class InvalidRequestError(LiteSrtError, ValueError):
    """A request's parameters are invalid (HTTP 400). `param` names the offending field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextLengthExceededError(InvalidRequestError):
    """The prompt (plus max_new_tokens where required) does not fit the context length."""


class QueueFullError(LiteSrtError):
    """The waiting queue is at --max-queued-requests (HTTP 503)."""


class EngineDeadError(LiteSrtError):
    """The forward thread failed; no further requests can run."""
