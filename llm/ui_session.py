"""The page's conversation as the server keeps it (llm/sessions): the browser's id for it, the chat a reload
shows, and each turn kept in it as far as the browser said it. The store being down never breaks a turn."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

from .errors import InvalidRequestError, LLMError
from .router import Router
from .sessions import checked_id
from .ui_text import say

if TYPE_CHECKING:
    from .ui_handlers import History, Turn

log = logging.getLogger(__name__)

KEEP_WAIT = 2.0         # seconds a turn waits for the one it cut off to be kept in the conversation


def new_session_id() -> str:
    return secrets.token_hex(16)


def open_conversation(router: Router, session: str | None, lang: str = "en") -> tuple[History, str, str]:
    """Page load: the browser's conversation (its id from the browser's storage) as the chat shows it,
    its id (a new one when the browser had none or a bad one), and a status line."""
    try:
        session = checked_id(session)
    except InvalidRequestError:
        return [], new_session_id(), ""
    try:
        messages = router.sessions.messages(session) or []
    except LLMError as e:
        return [], session, say(lang, "unread", message=e.message)
    return [{"role": m["role"], "content": m["content"]} for m in messages if m["content"]], session, ""


def hear(router: Router, turn: Turn, spoken: float | None) -> None:
    """`Turn.hear`, where a store that is down only leaves the whole reply in the conversation."""
    try:
        turn.hear(router, spoken)
    except LLMError as e:   # the store is down: the conversation keeps the whole reply
        log.warning("could not cut the conversation to what was said: %s", e.message)


async def conversation(router: Router, session: str, turn: Turn) -> History:
    """The conversation as the browser said it, once the turn this one cut off is kept (2 s at most)."""
    if turn.previous is not None:
        await asyncio.to_thread(turn.previous.kept.wait, KEEP_WAIT)
        turn.previous = None    # no chain of old turns kept alive
    return [m.as_dict() for m in await asyncio.to_thread(router.sessions.history, session)]


async def keep(router: Router, turn: Turn, session: str, question: str) -> None:
    """`Turn.keep` off the event loop; a store that is down only logs (the turn was shown)."""
    try:
        await asyncio.to_thread(turn.keep, router, session, question)
    except LLMError as e:
        log.warning("the turn was shown but not kept in the conversation: %s", e.message)
