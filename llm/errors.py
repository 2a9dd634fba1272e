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

    def __init__(self, message: str, *, param: str | None = None, **kw):
        super().__init__(message, **kw)
        self.param = param      # the request field at fault, when there is one


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
    """The backend failed; `upstream_status` keeps the backend's HTTP status when it had one.

    `transient`: another try may succeed (a 408/409/429/5xx answer, a lost connection).
    `retry_after`: the backend's Retry-After, in seconds, when it sent one."""

    status = 502
    type = "upstream_error"

    def __init__(self, message: str, *, upstream_status: int | None = None, transient: bool | None = None,
                 retry_after: float | None = None, **kw):
        super().__init__(message, **kw)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.transient = transient if transient is not None else upstream_status is not None and (
            upstream_status in (408, 409, 429) or upstream_status >= 500)


class UpstreamRefusedError(UpstreamError):
    """The backend refused a field the router itself sends (stream_options, say): a setting to change,
    whatever status it came with, so never retried and never a sign of ill health."""

    def __init__(self, message: str, **kw):
        super().__init__(message, transient=False, **kw)


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


class CoolingDownError(NotReadyError):
    """The provider failed recently and is skipped until its cooldown ends (its fallback answers)."""

    type = "cooling_down"

    def __init__(self, message: str, *, seconds_left: float, **kw):
        super().__init__(message, **kw)
        self.retry_after = seconds_left


class AllProvidersFailedError(UpstreamError):
    """Every provider of a fallback chain failed; the message names each one and why.

    The status is the one all failures share (429 when all were rate limited, 503 when none was
    ready), else 502; Retry-After is the soonest any of them may answer again."""

    type = "all_providers_failed"

    def __init__(self, errors: dict[str, LLMError]):
        self.errors = dict(errors)
        statuses = {e.status for e in errors.values()}
        waits = [w for e in errors.values() if (w := getattr(e, "retry_after", None)) is not None]
        tried = "; ".join(f"{name}: {e}" for name, e in errors.items())
        super().__init__(f"all {len(errors)} providers failed: {tried}",
                         status=statuses.pop() if len(statuses) == 1 else 502,
                         retry_after=min(waits) if waits else None, transient=False)
