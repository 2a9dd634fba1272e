"""FallbackChain: one request down its provider's fallback chain under the policy, on the event loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from contextlib import aclosing
from typing import AsyncIterator, Callable

from ..errors import AllProvidersFailedError, CancelledError, LLMError, UpstreamError, UpstreamTimeoutError
from ..types import CancelToken, Chunk
from .rules import STOP_WAIT, Breaker, Policy, backoff

log = logging.getLogger("llm.policy")


def _plus(start: float, limit: float | None) -> float | None:
    return None if limit is None else start + limit


class _Attempt:
    """One provider's go at the request (retries included): a task, its own cancel token, its clocks."""

    def __init__(self, name: str, policy: Policy, parent: CancelToken):
        self.name, self.policy = name, policy
        self.cancel = CancelToken()
        parent.on_cancel(self.cancel.cancel)
        self.started = time.monotonic()
        self.last_token: float | None = None     # the last raw token from the backend
        self.hedged = False

    def touch(self) -> None:
        self.last_token = time.monotonic()

    def deadline(self) -> float | None:
        """When this attempt times out: no first token, or silence mid-reply; None without a limit."""
        if self.last_token is None:
            return _plus(self.started, self.policy.first_token_timeout)
        return _plus(self.last_token, self.policy.stall_timeout)

    def timeout_error(self) -> UpstreamTimeoutError:
        if self.last_token is None:
            return UpstreamTimeoutError(f"{self.name}: no reply within {self.policy.first_token_timeout:g} s",
                fix="raise first_token_timeout in configs.yaml, or add a fallback provider")
        return UpstreamTimeoutError(
            f"{self.name}: the reply stalled for {self.policy.stall_timeout:g} s mid-stream",
            fix="raise stall_timeout in configs.yaml, or check the backend's load")


class FallbackChain:
    """One request down its fallback chain (iterate `run()`): attempts post to one queue, clocks are watched
    here. `show()` makes, per answering provider, a test of its text: True once the caller may see it (None:
    at once); until then a provider that fails, even after some text, is replaced and its text dropped."""

    def __init__(self, chain: list[str],
                 stream_one: Callable[[str, CancelToken, Callable[[], None]], AsyncIterator[Chunk]],
                 policy: Callable[[str], Policy], breaker: Callable[[str], Breaker], cancel: CancelToken,
                 show: Callable[[], Callable[[str], bool]] | None = None, redact: Callable[[str], str] = str):
        self.pending, self.stream_one, self.redact = list(chain), stream_one, redact
        self.policy, self.breaker, self.cancel, self.show = policy, breaker, cancel, show
        self.shown = False              # the winner's text has reached the caller
        self._may_show: Callable[[str], bool] = bool
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.tasks: dict[_Attempt, asyncio.Task] = {}
        self.running: list[_Attempt] = []
        self.errors: dict[str, LLMError] = {}
        self.winner: _Attempt | None = None
        self.buffer: list[Chunk] = []

    async def run(self) -> AsyncIterator[Chunk]:
        self.cancel.on_cancel(lambda: self._on_loop(self.events.put_nowait, (None, "cancel", None)))
        try:
            self._start_next()
            while True:
                out, ended = self._on_event(*await self._next_event())
                for chunk in out:
                    yield chunk
                if ended:
                    return
        finally:    # cancel what still runs and wait briefly for it to end, so the backend is free on return
            for attempt in self.running:
                attempt.cancel.cancel()
            tasks = [self.tasks[a] for a in self.running if not self.tasks[a].done()]
            if tasks:
                await asyncio.wait(tasks, timeout=STOP_WAIT)

    def _on_event(self, attempt: _Attempt | None, kind: str, payload: object) -> tuple[list[Chunk], bool]:
        """One event from an attempt: the chunks the caller may see now, and whether the reply ended."""
        if kind == "cancel" or self.cancel.cancelled:
            raise CancelledError("generation cancelled")
        if attempt not in self.running:
            return [], False    # a late word from an attempt already timed out or cancelled
        if kind == "text":
            if self.winner is None:     # the first attempt to produce text answers; the others are cancelled
                self.winner = attempt
                self._may_show = self.show() if self.show else (lambda _text: True)
                for other in [a for a in self.running if a is not attempt]:
                    log.info("%s answered first: cancelling %s", attempt.name, other.name)
                    self.running.remove(other)
                    other.cancel.cancel()
                    self.breaker(other.name).record(CancelledError("lost the race"), other.policy.cooldown)
            self.buffer.append(payload)     # empty once shown
            if self.shown or self._may_show(payload.text):
                self.shown, held, self.buffer = True, self.buffer, []
                return held, False
            return [], False
        if kind == "done":
            self.running.remove(attempt)
            self.breaker(attempt.name).record(None, attempt.policy.cooldown)
            return self.buffer, True
        self._failed(attempt, payload)
        return [], False

    def _start_next(self) -> None:
        """Start the next provider that is not cooling down; raise the collected errors if none is left."""
        while self.pending:
            name = self.pending.pop(0)
            try:
                policy = self.policy(name)      # builds the provider: an SDK may be missing
                self.breaker(name).admit(name, fallback=bool(self.pending))
            except LLMError as e:
                log.info("skipping %s: %s", name, self.redact(e.message))
                self.errors[name] = e
                continue
            attempt = _Attempt(name, policy, self.cancel)
            self.running.append(attempt)
            task = self.tasks[attempt] = self.loop.create_task(self._work(attempt), name=f"llm-{name}")
            attempt.cancel.on_cancel(lambda task=task: self._on_loop(task.cancel))
            return
        if not self.running:
            errors = list(self.errors.values())
            raise errors[0] if len(errors) == 1 else AllProvidersFailedError(self.errors)

    async def _next_event(self) -> tuple[_Attempt | None, str, object]:
        """The next event, or a timeout/hedge event made here when a clock runs out first."""
        while True:
            if not self.events.empty():     # the common case: no timer task per chunk
                return self.events.get_nowait()
            timers = []     # the clocks: each attempt's deadline, and when to hedge it
            for attempt in self.running:
                if (d := attempt.deadline()) is not None:
                    timers.append((d, attempt, "timeout"))
                if self.winner is None and self.pending and len(self.running) == 1 and not attempt.hedged \
                        and (h := _plus(attempt.started, attempt.policy.hedge_after)) is not None:
                    timers.append((h, attempt, "hedge"))
            soonest = min(timers, key=lambda t: t[0], default=None)
            wait = None if soonest is None else max(0.0, soonest[0] - time.monotonic())
            try:
                return await asyncio.wait_for(self.events.get(), wait)
            except asyncio.TimeoutError:    # a clock ran out: end the attempt with a timeout, or hedge it
                _, attempt, kind = soonest
                if kind == "timeout":
                    attempt.cancel.cancel()
                    return attempt, "error", attempt.timeout_error()
                attempt.hedged = True
                log.info("%s has said nothing in %g s: starting %s beside it", attempt.name,
                         attempt.policy.hedge_after, self.pending[0])
                self._start_next()

    def _failed(self, attempt: _Attempt, error: BaseException) -> None:
        self.running.remove(attempt)
        attempt.cancel.cancel()
        if not isinstance(error, LLMError):     # a bug in a provider: never hide it behind a fallback
            raise error
        if self.breaker(attempt.name).record(error, attempt.policy.cooldown):
            log.warning("%s: cooling down for %g s after: %s", attempt.name, attempt.policy.cooldown,
                        self.redact(str(error)))
        if isinstance(error, CancelledError) and self.cancel.cancelled:
            raise error
        self.errors[attempt.name] = error
        if attempt is self.winner:
            if self.shown:
                raise error     # its text already reached the caller: only the error can follow
            log.warning("%s failed mid-reply before anything was shown: %s", attempt.name,
                        self.redact(str(error)))
            self.winner, self.buffer = None, []
        else:
            log.warning("provider %s failed before any text: %s", attempt.name, self.redact(str(error)))
        if not self.running:
            self._start_next()

    def _on_loop(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the chain's loop: now if on it, else soon (cancels come from any thread)."""
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here:
            fn(*args)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    async def _work(self, attempt: _Attempt) -> None:
        try:    # on the chain's loop (a task of it): events go straight onto its queue
            await self._tries(attempt)
        except BaseException as e:  # noqa: BLE001 - handed to the scheduling loop
            error = CancelledError("generation cancelled") if isinstance(e, asyncio.CancelledError) else e
            self.events.put_nowait((attempt, "error", error))
        else:
            self.events.put_nowait((attempt, "done", None))

    async def _tries(self, attempt: _Attempt) -> None:
        """The attempt's tries, its chunks posted as they come. Chunks with no answer before them (finish
        reason, usage) are held back: a reply with neither text nor tool calls is an empty reply, an error."""
        for retry in itertools.count():
            produced, news = False, []
            try:
                async with aclosing(self.stream_one(attempt.name, attempt.cancel, attempt.touch)) as chunks:
                    async for chunk in chunks:
                        if not chunk.substantive and not produced:
                            news.append(chunk)
                            continue
                        produced = True
                        for item in (*news, chunk):
                            self.events.put_nowait((attempt, "text", item))
                        news.clear()
                if not produced:
                    raise UpstreamError(f"{attempt.name} returned an empty reply", upstream_status=200,
                                        fix="check the model and its prompt")
                return
            except UpstreamError as e:
                if produced or not e.transient or retry >= attempt.policy.retries or attempt.cancel.cancelled:
                    raise
                wait = backoff(retry, e.retry_after)
                deadline = _plus(attempt.started, attempt.policy.first_token_timeout)
                if wait is None or (deadline is not None and time.monotonic() + wait >= deadline):
                    raise   # the fallback (or the client, told Retry-After) does better than waiting
                log.info("%s failed (%s): retry %d of %d in %.2f s", attempt.name, self.redact(e.message),
                         retry + 1, attempt.policy.retries, wait)
                await asyncio.sleep(wait)   # a cancel cancels the task, and so this sleep
