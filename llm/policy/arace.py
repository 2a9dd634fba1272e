"""AsyncRace: Race on the event loop, for chains whose providers all have an async client."""

from __future__ import annotations

import asyncio
import itertools
import threading
from contextlib import aclosing
from typing import AsyncIterator

from ..errors import CancelledError, UpstreamError
from ..types import Chunk
from .race import Race, _Attempt, _Output, _seconds_to
from .rules import STOP_WAIT


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
