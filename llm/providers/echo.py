"""Direct Reply: the avatar says the user's text exactly as typed."""

from __future__ import annotations

from typing import AsyncIterator

from ..types import CancelToken, GenerationParams, Message
from . import KINDS
from .base import Provider


class EchoProvider(Provider):
    kind = "echo"
    styled = False      # Direct Reply is never styled
    verbatim = True     # and the avatar reads it exactly as typed
    honours = KINDS["echo"].honours

    async def astream(self, messages: list[Message], params: GenerationParams,
                      cancel: CancelToken) -> AsyncIterator[str]:
        yield messages[-1].content
