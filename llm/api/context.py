"""What the API's routes share (`Context`): the router, the limits, and the secrets that must never leak."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from ..router import Router


@dataclass
class Context:
    router: Router
    api_key: str | None
    max_body_bytes: int
    live: dict[str, Any] = field(default_factory=dict)     # session id -> its turn being answered now
    # session id -> a turn here waiting for another API process to keep the turn it cut off
    waiting: dict[str, Any] = field(default_factory=dict)
    listening: bool = False     # for other processes' barge-ins (a shared store)

    def authorized(self, scope: dict) -> bool:
        if not self.api_key or scope["path"] == "/health":     # the only route that needs no API key
            return True
        value = next((v for name, v in scope["headers"] if name == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key.encode())
