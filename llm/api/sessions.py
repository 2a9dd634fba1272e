"""`GET /sessions/{id}` (the conversation the server keeps) and `DELETE /sessions/{id}` (forget it)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Path, Request

from ..errors import InvalidRequestError
from ..sessions import checked_id
from .schemas import ApiError

# documented (and checked by FastAPI) as the seed route's `session` field is
SessionId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


async def session(request: Request, session_id: SessionId) -> dict:
    """GET: the session's messages; DELETE: forget it (one route, so a 405 lists both methods)."""
    return await (forget_session if request.method == "DELETE" else get_session)(request, session_id)


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
