"""FallbackChain: one request down its provider's fallback chain under the policy, on the event loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from contextlib import aclosing
from typing import AsyncIterator, Callable

from ..errors import (
    AllProvidersFailedError,
    CancelledError,
    LLMError,
    UpstreamError,
    UpstreamTimeoutError,
)
from ..types import CancelToken, Chunk
from .rules import STOP_WAIT, Breaker, Policy, backoff

log = logging.getLogger("llm.policy")



class _Attempt:
    """One provider's go at the request (retries included): a task, its own cancel token, its clocks."""

    def __init__(self, name: str, policy: Policy, parent: CancelToken):
        self.name, self.policy = name, policy
        self.cancel = CancelToken()
        parent.on_cancel(self.cancel.cancel)
        self.started = time.monotonic()
        self.last_token: float | None = None     # the last raw token from the backend
        self.texted = False                      # text was sent on to the caller
        self.hedged = False

    def touch(self) -> None:
        self.last_token = time.monotonic()

    def first_token_deadline(self) -> float | None:
        t = self.policy.first_token_timeout
        return None if t is None else self.started + t

    def deadline(self) -> float | None:
        """When this attempt times out: no first token, or silence mid-reply; None without a limit."""
        if self.last_token is None:
            limit = self.policy.first_token_timeout
            return None if limit is None else self.started + limit
        limit = self.policy.stall_timeout
        return None if limit is None else self.last_token + limit

    def timeout_error(self) -> UpstreamTimeoutError:
        if self.last_token is None:
            return UpstreamTimeoutError(
                f"{self.name}: no reply within {self.policy.first_token_timeout:g} s",
                fix="raise first_token_timeout in configs.yaml, or add a fallback provider")
        return UpstreamTimeoutError(
            f"{self.name}: the reply stalled for {self.policy.stall_timeout:g} s mid-stream",
            fix="raise stall_timeout in configs.yaml, or check the backend's load")

    def hedge_at(self) -> float | None:
        h = self.policy.hedge_after
        return None if h is None or self.hedged or self.texted else self.started + h


StreamOne = Callable[[str, CancelToken, Callable[[], None]], AsyncIterator[Chunk]]


class FallbackChain:
    """Runs one request down its fallback chain under the policy; iterate `run()` for the Chunks.
    Each attempt is a task on the running loop; their events come on one queue, and the clocks
    (deadlines, hedging) are watched here, so a deadline or a cancel never waits on a slow upstream.

    Text is held back until `show()` says it may go out: `show` makes, for each provider that
    answers, a function that sees each piece of its text and says True once the caller may show
    it (None: at once). Until then a provider that fails, even after some text, is replaced by the
    next one and its held text is dropped: the caller never saw it. A non-streaming route holds
    all (show never says yes: the reply comes when complete); the seed stream holds until the
    first whole sentence."""

    def __init__(self, chain: list[str], stream_one: StreamOne, policy: Callable[[str], Policy],
                 breaker: Callable[[str], Breaker], cancel: CancelToken,
                 show: Callable[[], Callable[[str], bool]] | None = None, redact: Callable[[str], str] = str):
        self.pending, self.stream_one, self.redact = list(chain), stream_one, redact
        self.policy, self.breaker = policy, breaker
        self.cancel, self.show = cancel, show
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
        self.cancel.on_cancel(lambda: self._post((None, "cancel", None)))
        try:
            self._start_next()
            while True:
                out, ended = self._on_event(*await self._next_event())
                for chunk in out:
                    yield chunk
                if ended:
                    return
        finally:
            await self._stop_all()

    def _on_event(self, attempt: _Attempt | None, kind: str, payload: object) -> tuple[list[Chunk], bool]:
        """One event from an attempt: the chunks the caller may see now, and whether the reply ended."""
        if kind == "cancel" or self.cancel.cancelled:
            raise CancelledError("generation cancelled")
        if attempt not in self.running:
            return [], False    # a late word from an attempt already timed out or cancelled
        if kind == "text":
            if self.winner is None:
                self._crown(attempt)
            if self.shown:
                return [payload], False
            self.buffer.append(payload)
            if self._may_show(payload.text):
                self.shown, held, self.buffer = True, self.buffer, []
                return held, False
            return [], False
        if kind == "done":
            self.running.remove(attempt)
            self.breaker(attempt.name).record(None, attempt.policy.cooldown)
            return self.buffer, True
        self._failed(attempt, payload)
        return [], False

    async def _stop_all(self) -> None:
        """Cancel what still runs (closing its upstream stream), then wait briefly for it to end, so
        closing a stream frees the backend (a model slot, a socket) before `close()` returns."""
        for attempt in self.running:
            attempt.cancel.cancel()
        tasks = [self.tasks[a] for a in self.running if not self.tasks[a].done()]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)

    # ---- scheduling --------------------------------------------------------------------------

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
            self._launch(attempt)
            return
        if not self.running:
            raise self._final_error()

    def _launch(self, attempt: _Attempt) -> None:
        task = self.tasks[attempt] = self.loop.create_task(self._work(attempt), name=f"llm-{attempt.name}")
        attempt.cancel.on_cancel(lambda: self._on_loop(task.cancel))

    async def _next_event(self) -> tuple[_Attempt | None, str, object]:
        """The next event, or a timeout/hedge event made here when a clock runs out first."""
        while True:
            if not self.events.empty():     # the common case: no timer task per chunk
                return self.events.get_nowait()
            soonest = self._soonest()
            try:
                return await asyncio.wait_for(self.events.get(), _seconds_to(soonest))
            except asyncio.TimeoutError:
                if (event := self._expire(soonest)) is not None:
                    return event

    def _soonest(self) -> tuple[float, _Attempt, str] | None:
        """The next clock to run out: an attempt's deadline, or when to hedge it."""
        timers = []
        for attempt in self.running:
            if (d := attempt.deadline()) is not None:
                timers.append((d, attempt, "timeout"))
            if self.winner is None and self.pending and len(self.running) == 1 and \
                    (h := attempt.hedge_at()) is not None:
                timers.append((h, attempt, "hedge"))
        return min(timers, key=lambda t: t[0], default=None)

    def _expire(self, timer: tuple[float, _Attempt, str]) -> tuple[_Attempt, str, object] | None:
        """A clock ran out: start the hedge (None), or end the attempt with a timeout (its error event)."""
        _, attempt, kind = timer
        if kind == "hedge":
            attempt.hedged = True
            log.info("%s has said nothing in %g s: starting %s beside it", attempt.name,
                     attempt.policy.hedge_after, self.pending[0])
            self._start_next()
            return None
        attempt.cancel.cancel()
        return attempt, "error", attempt.timeout_error()

    def _crown(self, attempt: _Attempt) -> None:
        """The first attempt to produce text answers; the others are cancelled."""
        self.winner = attempt
        self._may_show = self.show() if self.show else (lambda _text: True)
        for other in [a for a in self.running if a is not attempt]:
            log.info("%s answered first: cancelling %s", attempt.name, other.name)
            self.running.remove(other)
            other.cancel.cancel()
            self.breaker(other.name).record(CancelledError("lost the race"), other.policy.cooldown)

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

    def _final_error(self) -> LLMError:
        if len(self.errors) == 1:
            return next(iter(self.errors.values()))
        return AllProvidersFailedError(self.errors)

    # ---- one attempt, as a task --------------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` on the chain's loop: now when called there, else soon (a cancel may come from
        any thread: the page's Stop, a closing sync facade)."""
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here:
            fn(*args)
        elif not self.loop.is_closed():
            self.loop.call_soon_threadsafe(fn, *args)

    def _post(self, event: tuple[_Attempt | None, str, object]) -> None:
        self._on_loop(self.events.put_nowait, event)

    async def _work(self, attempt: _Attempt) -> None:
        try:
            await self._tries(attempt)
        except asyncio.CancelledError:
            self._post((attempt, "error", CancelledError("generation cancelled")))
        except BaseException as e:  # noqa: BLE001 - handed to the scheduling loop
            self._post((attempt, "error", e))
        else:
            self._post((attempt, "done", None))

    async def _tries(self, attempt: _Attempt) -> None:
        for retry in itertools.count():
            out = _Output(self, attempt)
            try:
                async with aclosing(self.stream_one(attempt.name, attempt.cancel, attempt.touch)) as chunks:
                    async for chunk in chunks:
                        out.put(chunk)
                return out.end()
            except UpstreamError as e:
                wait = self._retry_wait(attempt, e, retry, out.produced)
                if wait is None:
                    raise
                await asyncio.sleep(wait)   # a cancel cancels the task, and so this sleep

    def _retry_wait(self, attempt: _Attempt, error: UpstreamError, retry: int,
                    produced: bool) -> float | None:
        """Seconds to wait before trying again, or None when this error is final."""
        if produced or not error.transient or retry >= attempt.policy.retries or attempt.cancel.cancelled:
            return None
        wait = backoff(retry, error.retry_after)
        deadline = attempt.first_token_deadline()
        if wait is None or (deadline is not None and time.monotonic() + wait >= deadline):
            return None     # the fallback (or the client, told Retry-After) does better than waiting
        log.info("%s failed (%s): retry %d of %d in %.2f s", attempt.name, self.redact(error.message),
                 retry + 1, attempt.policy.retries, wait)
        return wait


def _seconds_to(timer: tuple[float, _Attempt, str] | None) -> float | None:
    return None if timer is None else max(0.0, timer[0] - time.monotonic())


class _Output:
    """One try's chunks on their way to the race. An end with no answer before it (finish reason,
    usage) is held back: a reply with neither text nor tool calls is an empty reply, an error."""

    def __init__(self, race: FallbackChain, attempt: _Attempt):
        self.race, self.attempt = race, attempt
        self.produced, self.news = False, []

    def put(self, chunk: Chunk) -> None:
        if not chunk.substantive and not self.produced:
            self.news.append(chunk)
            return
        self.produced = self.attempt.texted = True
        for item in (*self.news, chunk):
            self.race._post((self.attempt, "text", item))
        self.news.clear()

    def end(self) -> None:
        if not self.produced:
            raise UpstreamError(f"{self.attempt.name} returned an empty reply", upstream_status=200,
                                fix="check the model and its prompt")
