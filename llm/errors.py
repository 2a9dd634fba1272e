"""Typed errors: the core raises these, only the edges (UI, HTTP) turn them into messages."""

from __future__ import annotations


class LLMError(Exception):
    """Base of every error the router raises; `status` is the HTTP status an edge should use."""

    status = 500
    type = "llm_error"

    def __init__(self, message: str, *, fix: str = "", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.fix})" if self.fix else self.message


class ConfigError(LLMError):
    """The settings (file, env or flags) are invalid; the message names the file, key and fix."""

    type = "config_error"


class InvalidRequestError(LLMError):
    """The caller's input is unusable (empty prompt, bad history shape, out-of-range params)."""

    status = 400
    type = "invalid_request_error"


class UnknownProviderError(LLMError):
    status = 404
    type = "unknown_provider"


class NotReadyError(LLMError):
    """The provider cannot answer yet: weights missing, SDK missing, key missing."""

    status = 503
    type = "provider_not_ready"


class MissingKeyError(NotReadyError):
    type = "missing_api_key"


class UpstreamError(LLMError):
    """The backend failed; `upstream_status` keeps the backend's HTTP status when it had one."""

    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, **kw):
        super().__init__(message, **kw)
        self.upstream_status = upstream_status


class RateLimitError(UpstreamError):
    status = 429
    type = "rate_limited"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "upstream_timeout"


class CancelledError(LLMError):
    """The caller cancelled the generation."""

    status = 499
    type = "cancelled"
