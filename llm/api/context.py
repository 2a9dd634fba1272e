"""What the API's routes share (`Context`): the router, the limits, and the secrets that must never leak."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ..router import Router

OPEN_PATHS = ("/health",)       # the only route that needs no API key


@dataclass
class Context:
    """What the routes share: the router, the limits, and the secrets that must never leak."""

    router: Router
    api_key: str | None
    max_body_bytes: int

    def authorized(self, scope: dict) -> bool:
        if not self.api_key or scope["path"] in OPEN_PATHS:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(),
                                                                           self.api_key.encode())
        return False

    def redact(self, text: str) -> str:
        """`text` with the server's key and every provider key replaced by ***."""
        return self.router.redact(text)
