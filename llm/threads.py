"""Between blocking code and the event loop: `spawn` (reused threads), `in_worker`, `in_loop`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import AsyncIterator, Awaitable, Callable, Iterator

from .errors import CancelledError
from .types import CancelToken

log = logging.getLogger("llm.policy")
JOIN_WAIT = 1.0         # seconds a closed reader waits for its worker to let go of the backend
IDLE_NAME = "pool-idle"
IDLE_SECONDS = 60.0     # an idle pooled thread ends after this long
_IDLE: list[queue.SimpleQueue] = []    # the job queues of the idle pooled threads
_IDLE_LOCK = threading.Lock()


def _serve(jobs: queue.SimpleQueue) -> None:
    """A pooled daemon thread: runs `spawn`'s jobs from `jobs` one at a time, then waits for the next."""
    thread = threading.current_thread()
    while True:
        try:
            fn, args, name = jobs.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            with _IDLE_LOCK:
                if jobs in _IDLE:       # still idle, and nobody can hand us a job now
                    _IDLE.remove(jobs)
                    return
            continue                    # taken just now: its job is on the way
        thread.name = name              # while it runs, the thread says whose it is (leak checks)
        try:
            fn(*args)
        except BaseException:  # noqa: BLE001 - a job reports its own errors; keep the thread
            log.exception("unhandled error in %s", name)
        finally:
            thread.name = IDLE_NAME
            with _IDLE_LOCK:
                _IDLE.append(jobs)


def spawn(fn: Callable, *args: object, name: str) -> None:
    """Run `fn(*args)` in a daemon thread of its own (named `name` meanwhile), reusing an idle one: a new
    thread per request cost more than the rest of a short request's bookkeeping."""
    with _IDLE_LOCK:
        jobs = _IDLE.pop() if _IDLE else None
    if jobs is None:
        jobs = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(jobs,), name=IDLE_NAME, daemon=True).start()
    jobs.put((fn, args, name))


async def in_worker(items: Callable[[], Iterator], cancel: CancelToken, *, name: str) -> AsyncIterator:
    """The items of the blocking generator `items()`, made lazily (only when asked), read and closed in a
    worker thread. Closing this cancels `cancel` and waits (JOIN_WAIT) for the worker to close it."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    asked = threading.Semaphore(0)
    cancel.on_cancel(asked.release)     # wakes a worker waiting to be asked
    end = object()
    finished = asyncio.Event()

    def post(item: object) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:    # the loop closed: nobody reads any more
            cancel.cancel()

    def work() -> None:
        try:
            with contextlib.closing(items()) as gen:
                while asked.acquire() and not cancel.cancelled:
                    item = next(gen, end)
                    post(item)
                    if item is end:
                        return
                post(CancelledError("generation cancelled"))    # a reader may still be waiting
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            post(e)
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished.set)

    spawn(work, name=name)
    try:
        while True:
            asked.release()
            item = await inbox.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.cancel()
        try:
            await asyncio.wait_for(finished.wait(), JOIN_WAIT)
        except asyncio.TimeoutError:
            log.warning("%s did not stop within %g s of its cancel: left to finish alone", name, JOIN_WAIT)


def in_loop(make: Callable[[], AsyncIterator], cancel: CancelToken,
            finish: Callable[[], Awaitable[None]] | None = None) -> Iterator:
    """The items of the async generator `make()` for blocking code (not on a running loop), on an event loop
    of this call's own; a cancel interrupts the wait; at the end `finish` runs on it (closing its clients)."""
    loop = asyncio.new_event_loop()
    agen = make()
    step: list[asyncio.Future] = []

    def interrupt() -> None:
        with contextlib.suppress(RuntimeError):     # the loop has closed: nothing is waiting
            loop.call_soon_threadsafe(lambda: [s.cancel() for s in step])

    cancel.on_cancel(interrupt)
    try:
        while True:
            step[:] = [asyncio.ensure_future(agen.__anext__(), loop=loop)]
            try:
                item = loop.run_until_complete(step[0])
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                raise CancelledError("generation cancelled") from None
            yield item
    finally:
        step.clear()
        loop.run_until_complete(agen.aclose())
        if finish is not None:
            loop.run_until_complete(finish())
        loop.close()
