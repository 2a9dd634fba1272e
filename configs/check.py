"""What every section's parser shares: errors that name the file, the key and the fix; type checks."""

from __future__ import annotations

import math
from typing import Any

from llm.errors import ConfigError


class Where:
    """Builds ConfigErrors that name the file, the key and the fix."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str):
        raise ConfigError(f"{self.source}: {key}: {problem}", fix=f"edit {key} in {self.source}"
                          if self.source != "environment" else f"fix the environment variable {key}")

    def unknown_keys(self, data: dict, allowed, prefix: str) -> None:
        for k in data:
            if k not in allowed:
                self.fail(f"{prefix}{k}", f"unknown key (allowed: {', '.join(allowed)})")


def expect(value: Any, typ: type, where: Where, key: str):
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        where.fail(key, f"must be a {typ.__name__}, got {type(value).__name__} {value!r:.40}")
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
