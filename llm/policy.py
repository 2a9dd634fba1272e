"""The reliability policy, in one place: retries, cooldown, deadlines and hedged fallback.

The router hands one request's fallback chain to `Race`. Each provider call (an *attempt*) runs in
a thread of its own and reports text, its end or its error on one queue; the caller's thread
watches the clock, so a deadline or a cancel never waits on a blocked socket:

- retries: an attempt retries transient failures (408/409/429/5xx, a lost connection) before any
  text, with exponential backoff and jitter, or after the backend's Retry-After when that is short;
- deadlines: no text within `first_token_timeout`, or silence for `stall_timeout` mid-reply, ends
  the attempt with a 504 (and its socket is shut: see `providers.transport`);
- cooldown: a provider that timed out or failed `FAILURES_TO_OPEN` requests in a row is skipped for
  `cooldown` seconds; then one probe request decides whether it is back;
- hedging: with `hedge_after`, a provider that has said nothing by then gets its first fallback
  started beside it; whichever produces text first answers and the other is cancelled.

Hand-written rather than tenacity or stamina: the wait must end early on a cancel (Stop, a client
hanging up), fit inside the request's first-token deadline and yield to Retry-After, and a retry is
only allowed before the first text of a generator; expressing that through a retry library's hooks
took more code than the loop below.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import random
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

from .errors import (
    AllProvidersFailedError,
    CancelledError,
    CoolingDownError,
    LLMError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .providers.transport import abort_scope
from .types import CancelToken, Chunk

if TYPE_CHECKING:
    from .providers import Provider

log = logging.getLogger(__name__)

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
    """Seconds to wait before retry number `retry` (0 first); None when the backend's Retry-After
    asks for more than we are willing to wait."""
    if retry_after is not None:
        return retry_after if retry_after <= RETRY_AFTER_CAP else None
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** retry) * random.uniform(0.5, 1.0)


def counts_as_failure(error: BaseException) -> bool:
    """Whether an error says the provider is unwell (not the caller's request, key or model name)."""
    if not isinstance(error, UpstreamError):
        return False
    status = error.upstream_status
    return error.transient or status is None or status >= 500 or status == 200


class Breaker:
    """One provider's circuit breaker: closed -> cooling down -> one probe -> closed or cooling again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0
        self._until = 0.0           # monotonic end of the cooldown; 0 when closed
        self._probing = False
        self.last_error = ""

    def admit(self, name: str) -> None:
        """Let a request through, or raise CoolingDownError; after a cooldown, the first one is the probe."""
        with self._lock:
            if not self._until:
                return
            left = self._until - time.monotonic()
            if left <= 0 and not self._probing:
                self._probing = True
                return
            when = f"{left:.0f} s left" if left > 0 else "a probe request is checking it"
            raise CoolingDownError(f"{name} is cooling down, {when} (last error: {self.last_error})",
                                   seconds_left=max(left, 1.0),
                                   fix="its fallback answers meanwhile; set cooldown: 0 to turn this off")

    def record(self, error: BaseException | None, cooldown: float) -> bool:
        """The outcome of an admitted request (None for success); True when it starts a cooldown."""
        with self._lock:
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
        """Seconds of cooldown left (0 when the provider may be asked)."""
        with self._lock:
            return max(0.0, self._until - time.monotonic()) if self._until else 0.0


class _Attempt:
    """One provider's go at the request: a thread, its own cancel token, and its clocks."""

    def __init__(self, name: str, policy: Policy, parent: CancelToken):
        self.name, self.policy = name, policy
        self.cancel = CancelToken()
        parent.on_cancel(self.cancel.cancel)
        self.started = time.monotonic()
        self.last_token: float | None = None     # the last raw token from the backend
        self.texted = False                      # text was sent on to the caller
        self.hedged = False
        self.finished = threading.Event()       # its thread has let go of the provider

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


StreamOne = Callable[[str, CancelToken, Callable[[], None]], Iterator[Chunk]]


class Race:
    """Runs one request down its fallback chain under the policy; iterate `run()` for the Chunks.

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
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.running: list[_Attempt] = []
        self.errors: dict[str, LLMError] = {}
        self.winner: _Attempt | None = None
        self.buffer: list[Chunk] = []

    def run(self) -> Iterator[Chunk]:
        self.cancel.on_cancel(lambda: self.events.put((None, "cancel", None)))
        try:
            self._start_next()
            while True:
                out, ended = self._on_event(*self._next_event())
                yield from out
                if ended:
                    return
        finally:
            self._stop_all()

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

    def _stop_all(self) -> None:
        """Cancel what still runs (closing its upstream stream), then wait briefly for it to end, so
        closing a stream frees the backend (a model slot, a socket) before `close()` returns."""
        for attempt in self.running:
            attempt.cancel.cancel()
        deadline = time.monotonic() + STOP_WAIT
        for attempt in self.running:
            attempt.finished.wait(max(0.0, deadline - time.monotonic()))

    # ---- scheduling --------------------------------------------------------------------------

    def _start_next(self) -> None:
        """Start the next provider that is not cooling down; raise the collected errors if none is left."""
        while self.pending:
            name = self.pending.pop(0)
            try:
                policy = self.policy(name)      # builds the provider: an SDK may be missing
                self.breaker(name).admit(name)
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
        spawn(self._work, attempt, name=f"llm-{attempt.name}")

    def _next_event(self) -> tuple[_Attempt | None, str, object]:
        """The next event, or a timeout/hedge event made here when a clock runs out first."""
        while True:
            soonest = self._soonest()
            try:
                return self.events.get(timeout=_seconds_to(soonest))
            except queue.Empty:
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

    # ---- one attempt, in its own thread ------------------------------------------------------

    def _post(self, event: tuple[_Attempt | None, str, object]) -> None:
        self.events.put(event)

    def _work(self, attempt: _Attempt) -> None:
        try:
            with abort_scope(attempt.cancel):
                self._tries(attempt)
        except BaseException as e:  # noqa: BLE001 - handed to the scheduling thread
            self._post((attempt, "error", e))
        else:
            self._post((attempt, "done", None))
        finally:
            attempt.finished.set()

    def _tries(self, attempt: _Attempt) -> None:
        for retry in itertools.count():
            out = _Output(self, attempt)
            try:
                for chunk in self.stream_one(attempt.name, attempt.cancel, attempt.touch):
                    out.put(chunk)
                return out.end()
            except UpstreamError as e:
                wait = self._retry_wait(attempt, e, retry, out.produced)
                if wait is None:
                    raise
                if attempt.cancel.wait(wait):
                    raise CancelledError("generation cancelled") from e

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


class AsyncRace(Race):
    """`Race` on the event loop, for chains whose providers all have an async client: each attempt is a
    task instead of a thread, and the events never cross a thread. Same policy, same events, same
    outcome; `stream_one` gives an async iterator of Chunks."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.events: asyncio.Queue = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        self.tasks: dict[_Attempt, asyncio.Task] = {}

    async def arun(self) -> AsyncIterator[Chunk]:
        self.cancel.on_cancel(lambda: self._post((None, "cancel", None)))
        try:
            self._start_next()
            while True:
                out, ended = self._on_event(*await self._anext_event())
                for chunk in out:
                    yield chunk
                if ended:
                    return
        finally:
            await self._astop_all()

    def _post(self, event: tuple[_Attempt | None, str, object]) -> None:
        if threading.get_ident() == self.thread:
            self.events.put_nowait(event)
        elif not self.loop.is_closed():     # a cancel from another thread
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def _launch(self, attempt: _Attempt) -> None:
        task = self.tasks[attempt] = self.loop.create_task(self._awork(attempt), name=f"llm-{attempt.name}")

        def stop() -> None:
            if threading.get_ident() == self.thread:
                task.cancel()
            elif not self.loop.is_closed():
                self.loop.call_soon_threadsafe(task.cancel)
        attempt.cancel.on_cancel(stop)

    async def _anext_event(self) -> tuple[_Attempt | None, str, object]:
        while True:
            if not self.events.empty():     # the common case: no timer task per chunk
                return self.events.get_nowait()
            soonest = self._soonest()
            try:
                return await asyncio.wait_for(self.events.get(), _seconds_to(soonest))
            except asyncio.TimeoutError:
                if (event := self._expire(soonest)) is not None:
                    return event

    async def _awork(self, attempt: _Attempt) -> None:
        try:
            await self._atries(attempt)
        except asyncio.CancelledError:
            self._post((attempt, "error", CancelledError("generation cancelled")))
        except BaseException as e:  # noqa: BLE001 - handed to the scheduling loop
            self._post((attempt, "error", e))
        else:
            self._post((attempt, "done", None))
        finally:
            attempt.finished.set()

    async def _atries(self, attempt: _Attempt) -> None:
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

    async def _astop_all(self) -> None:
        for attempt in self.running:
            attempt.cancel.cancel()
        tasks = [self.tasks[a] for a in self.running if not self.tasks[a].done()]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT)


class _Output:
    """One try's chunks on their way to the race. An end with no answer before it (finish reason,
    usage) is held back: a reply with neither text nor tool calls is an empty reply, an error."""

    def __init__(self, race: Race, attempt: _Attempt):
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
                                fix="check the model and its prompt; a fallback answers meanwhile")


# ---- threads -----------------------------------------------------------------------------------

IDLE_NAME = "pool-idle"
IDLE_SECONDS = 60.0     # an idle pooled thread ends after this long


class _Worker:
    """A daemon thread that runs one job at a time for `spawn`, then waits for the next."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=IDLE_NAME, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                with _IDLE_LOCK:
                    if self in _IDLE:       # still idle, and nobody can hand us a job now
                        _IDLE.remove(self)
                        return
                continue                    # taken just now: its job is on the way
            fn, args, name = job
            self.thread.name = name         # while it runs, the thread says whose it is (leak checks)
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a job reports its own errors; keep the thread
                log.exception("unhandled error in %s", name)
            finally:
                self.thread.name = IDLE_NAME
                with _IDLE_LOCK:
                    _IDLE.append(self)


_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()


def spawn(fn: Callable, *args: object, name: str) -> None:
    """Run `fn(*args)` in a thread of its own, reusing an idle one: a new thread per request cost
    more than the rest of a short request's bookkeeping. Threads are daemons, named `name` while
    they work, and never shared by two jobs at once (a job may block as long as it needs)."""
    with _IDLE_LOCK:
        worker = _IDLE.pop() if _IDLE else None
    (worker or _Worker()).jobs.put((fn, args, name))
