"""`GET /sessions/{id}` (the conversation the server keeps) and `DELETE /sessions/{id}` (forget it)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Annotated

from fastapi import Path, Request

from ..errors import InvalidRequestError, LLMError
from ..sessions import checked_id
from ..types import CancelToken
from .schemas import ApiError, HeardRequest, read_body

log = logging.getLogger("llm.api")

# documented (and checked by FastAPI) as the seed route's `session` field is
SessionId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


async def session(request: Request, session_id: SessionId) -> dict:
    """GET: the session's messages; DELETE: forget it (one route, so a 405 lists both methods)."""
    return await (forget_session if request.method == "DELETE" else get_session)(request, session_id)


async def heard(request: Request, session_id: SessionId) -> dict:
    """The client says only the first N sentences of the session's last reply were heard (it stopped the
    avatar): the history keeps only those, and the reply is marked cut "stopped"."""
    body = await read_body(request, HeardRequest, request.app.state.ctx.max_body_bytes)
    sessions = await _sessions(request, session_id)
    kept = await asyncio.to_thread(sessions.heard, session_id, body.sentences)
    if kept is None:
        raise ApiError(404, "not_found", f"no session {session_id!r} with a reply")
    return {"session": session_id, "reply": kept}


async def get_session(request: Request, session_id: str) -> dict:
    """The session's messages (role, content, at: Unix time, the provider of each reply, and `cut` for a
    reply that was stopped, hung up on or failed before its end); 404 when there is none."""
    sessions = await _sessions(request, session_id)
    messages = await asyncio.to_thread(sessions.messages, session_id)
    if messages is None:
        raise ApiError(404, "not_found", f"no session {session_id!r} (never started, forgotten or expired)")
    return {"session": session_id, "messages": messages}


async def forget_session(request: Request, session_id: str) -> dict:
    """Forget the session; 404 when there is none."""
    sessions = await _sessions(request, session_id)
    if not await asyncio.to_thread(sessions.forget, session_id):
        raise ApiError(404, "not_found", f"no session {session_id!r}")
    return {"session": session_id, "deleted": True}


async def _sessions(request: Request, session_id: str):
    try:
        checked_id(session_id)
    except InvalidRequestError as e:
        raise ApiError(422, "invalid_request_error", e.message, param="session") from e
    router = request.app.state.ctx.router
    return await asyncio.to_thread(lambda: router.sessions)


BARGE_WAIT = 2.0    # seconds a new prompt waits for the reply it cut off to be kept


class Turn:
    """One turn of a kept session in this process: recorded once, as far as its sentences reached the
    client; a new prompt on the same session cuts it off (barge-in) and waits for it to be kept."""

    def __init__(self, ctx, sessions, session: str, prompt: str):
        self.ctx, self.sessions, self.session, self.prompt = ctx, sessions, session, prompt
        self.cancel = CancelToken()
        self.heard: list[str] = []
        self.cut: str | None = None         # "barged_in" when a new prompt cut it off
        self.barged_by: str | None = None   # the API process whose new prompt cut it off, if another
        self.recorded = False
        self.done = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def take_over(self) -> None:
        """Own the session: a turn still being answered is cancelled (its upstream closed) and kept as
        heard before this one reads the history; two prompts never generate at once on one session."""
        before = self.ctx.live.get(self.session)
        self.ctx.live[self.session] = self
        if before is not None and not before.done.is_set():
            before.cut = "barged_in"
            before.cancel.cancel()
            try:
                await asyncio.wait_for(before.done.wait(), BARGE_WAIT)
            except TimeoutError:    # its client is not reading: go on; it is kept when it ends
                log.warning("session %r: the reply cut off was not kept within %.0f s", self.session,
                            BARGE_WAIT)
        if self.sessions.shared:    # another API process may be answering it: it is told to stop
            kept = self.ctx.waiting[self.session] = self._loop.create_future()
            try:
                if await asyncio.to_thread(self.sessions.claim, self.session):
                    await asyncio.wait_for(kept, BARGE_WAIT)
            except TimeoutError:
                log.warning("session %r: another API process did not keep the reply cut off within %.0f s",
                            self.session, BARGE_WAIT)
            finally:
                if self.ctx.waiting.get(self.session) is kept:
                    del self.ctx.waiting[self.session]

    def record(self, provider: str, cut: str | None = None) -> None:
        """Keep the turn (blocking: from a worker thread)."""
        if not self.recorded:
            self.recorded = True
            self.sessions.record(self.session, self.prompt, "".join(self.heard), provider, self.cut or cut)

    def keep(self, provider: str | None, cut: str | None = None) -> None:
        """Keep the turn (if a reply began) and give the session up in the store (blocking)."""
        try:
            if provider is not None:
                self.record(provider, cut)
        finally:
            try:
                self.sessions.release(self.session, self.barged_by)
            except LLMError as e:   # the store is down: the claim goes stale by itself
                log.warning("session %r: could not release it in the store: %s", self.session, e.message)

    async def finish(self, provider: str | None, cut: str | None = None) -> None:
        """Keep the turn (if a reply began) and give the session up."""
        try:
            await asyncio.to_thread(self.keep, provider, cut)
        finally:
            self.release()

    def finish_later(self, provider: str, cut: str) -> None:
        """`finish` from a task that is ending (a client that hung up): in a thread, then the release.
        Nothing when the turn is finished already."""
        if self.done.is_set() or self.recorded:
            return

        def run() -> None:
            try:
                self.keep(provider, cut)
            finally:
                self._loop.call_soon_threadsafe(self.release)
        threading.Thread(target=run, name="session-record", daemon=True).start()

    def release(self) -> None:
        self.done.set()
        if self.ctx.live.get(self.session) is self:
            del self.ctx.live[self.session]


async def open_turn(request: Request, session: str | None, prompt: str) -> Turn | None:
    """The turn of `session` (None without one), owning the session."""
    if session is None:
        return None
    router = request.app.state.ctx.router
    sessions = await asyncio.to_thread(lambda: router.sessions)   # opened on first use: disk, network
    ctx = request.app.state.ctx
    if sessions.shared and not ctx.listening:
        ctx.listening = True
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(sessions.listen, lambda signal: loop.call_soon_threadsafe(
            _signal, ctx, sessions, signal))
    turn = Turn(ctx, sessions, session, prompt)
    await turn.take_over()
    return turn


def _signal(ctx, sessions, signal: dict) -> None:
    """Another API process's word on a session: a new prompt there cuts off the turn live here (which
    says "kept" once kept; at once when there is none), or the turn it cut off here is kept."""
    if "barge" in signal:
        turn = ctx.live.get(signal["barge"])
        if turn is None or turn.done.is_set():
            threading.Thread(target=sessions.release, args=(signal["barge"], signal["by"]), daemon=True,
                             name="session-kept").start()
        else:
            turn.barged_by, turn.cut = signal["by"], "barged_in"
            turn.cancel.cancel()
    elif "kept" in signal:
        kept = ctx.waiting.get(signal["kept"])
        if kept is not None and not kept.done():
            kept.set_result(None)
