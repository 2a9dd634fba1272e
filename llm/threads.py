"""Worker threads for blocking libraries: `spawn` (reused threads) and `in_worker` (a blocking
generator read on the event loop)."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import AsyncIterator, Callable, Iterator

from .types import CancelToken

log = logging.getLogger("llm.policy")


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


async def in_worker(items: Callable[[], Iterator], cancel: CancelToken, *, name: str) -> AsyncIterator:
    """The items of the blocking generator `items()`, made and closed in a worker thread, read on the
    event loop without blocking it. Closing this cancels `cancel`, which the generator heeds (a local
    model stops at its next token, an HTTP call's socket is shut), and returns at once: a generator
    that does not heed it only keeps its own thread."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()
    end = object()

    def post(item: object) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:    # the loop closed: nobody reads any more
            cancel.cancel()

    def work() -> None:
        try:
            gen = items()
            try:
                for item in gen:
                    post(item)
                    if cancel.cancelled:
                        break
            finally:
                gen.close()
            post(end)
        except BaseException as e:  # noqa: BLE001 - handed to the reader
            post(e)

    spawn(work, name=name)
    try:
        while (item := await inbox.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.cancel()
