"""One provider's reliability settings, the retry backoff, and the cooldown breaker."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CoolingDownError, UpstreamError, UpstreamRefusedError, UpstreamTimeoutError

if TYPE_CHECKING:
    from ..providers import Provider

DEFAULT_COOLDOWN = 30.0         # seconds a failing provider is skipped
FAILURES_TO_OPEN = 3            # failed requests in a row that start a cooldown (a timeout: at once)
BACKOFF_BASE, BACKOFF_CAP = 0.25, 4.0   # seconds: 0.25, 0.5, 1, 2, 4 (each times a jitter of 0.5-1)
RETRY_AFTER_CAP = 10.0          # a longer Retry-After goes to the fallback instead of waiting
STOP_WAIT = 2.0                 # seconds a closed stream waits for its attempts to wind down


@dataclass(frozen=True)
class Policy:
    """One provider's reliability settings, its config over its kind's defaults (None/0: off)."""

    retries: int = 0
    cooldown: float = DEFAULT_COOLDOWN
    first_token_timeout: float | None = None
    stall_timeout: float | None = None
    hedge_after: float | None = None

    @classmethod
    def of(cls, provider: Provider) -> Policy:
        cfg = provider.config

        def pick(value, default):
            return default if value is None else value

        first = pick(cfg.first_token_timeout, provider.default_first_token_timeout)
        return cls(retries=pick(cfg.retries, provider.default_retries),
                   cooldown=pick(cfg.cooldown, DEFAULT_COOLDOWN),
                   first_token_timeout=first or None,
                   stall_timeout=pick(cfg.stall_timeout, provider.default_stall_timeout) or None,
                   hedge_after=cfg.hedge_after or None)


def backoff(retry: int, retry_after: float | None = None) -> float | None:
    """Seconds to wait before retry number `retry` (0 first); None when Retry-After asks for too long."""
    if retry_after is not None:
        return retry_after if retry_after <= RETRY_AFTER_CAP else None
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** retry) * random.uniform(0.5, 1.0)


def counts_as_failure(error: BaseException) -> bool:
    """Whether an error shows ill health that cools the provider down for everyone (no connection, a timeout,
    a 5xx or a 429); what one request's content caused (a 4xx, a refused field, an empty reply) never does."""
    if not isinstance(error, UpstreamError) or isinstance(error, UpstreamRefusedError):
        return False
    return error.transient or error.upstream_status is None or error.upstream_status >= 500


def cooling_fix(fallback: bool) -> str:
    return "its fallback answers meanwhile" if fallback else "retry after Retry-After, or add a fallback"


class Breaker:
    """One provider's circuit breaker: closed -> cooling down -> one probe -> closed or cooling again. Its
    state changes only in `admit` and `record`, which never await, so on one event loop each runs whole;
    two loops sharing a provider (the page's and the API's) may at worst both send the probe."""

    def __init__(self) -> None:
        self._failures = 0
        self._until = 0.0           # monotonic end of the cooldown; 0 when closed
        self._probing = False
        self.last_error = ""

    def admit(self, name: str, fallback: bool = False) -> None:
        """Let a request through, or raise CoolingDownError; after a cooldown, the first one is the probe.
        `fallback`: whether another provider answers this request meanwhile (the error's fix says so)."""
        if not self._until:
            return
        left = self._until - time.monotonic()
        if left <= 0 and not self._probing:
            self._probing = True
            return
        when = f"{left:.0f} s left" if left > 0 else "a probe request is checking it"
        raise CoolingDownError(f"{name} is cooling down, {when} (last error: {self.last_error})",
                               seconds_left=max(left, 1.0),
                               fix=cooling_fix(fallback) + "; set cooldown: 0 to turn this off")

    def record(self, error: BaseException | None, cooldown: float) -> bool:
        """The outcome of an admitted request (None for success); True when it starts a cooldown."""
        probing, self._probing = self._probing, False
        if error is None:
            self._failures, self._until, self.last_error = 0, 0.0, ""
            return False
        if not counts_as_failure(error):
            return False    # a cancel, a bad request: says nothing about the provider's health
        self._failures += 1
        self.last_error = str(getattr(error, "message", error))
        hard = isinstance(error, UpstreamTimeoutError) or probing or self._failures >= FAILURES_TO_OPEN
        if hard and cooldown > 0:
            self._until = time.monotonic() + cooldown
            return True
        return False

    def seconds_left(self) -> float:
        return max(0.0, self._until - time.monotonic())     # 0 when the provider may be asked (closed: 0 too)
