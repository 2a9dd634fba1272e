"""An injected in-process provider for router-level tests (no network, no weights)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from configs import PRESETS, ProviderConfig, Settings
from llm.errors import LLMError
from llm.providers.base import Provider


class ScriptedProvider(Provider):
    """Streams scripted deltas; records what it was asked and how far it got."""

    kind = "scripted"

    def __init__(self, name: str, deltas: list[str] | None = None, *, delay: float = 0.0,
                 error: LLMError | None = None, fail_after: int | None = None, **cfg):
        super().__init__(ProviderConfig(name=name, kind="openai", model="scripted", **cfg), env={})
        self.deltas = deltas if deltas is not None else ["你好", "，", "我是", "数字人", "。"]
        self.delay, self.error, self.fail_after = delay, error, fail_after
        self.calls: list[tuple[list, object]] = []
        self.yielded = 0
        self.closed = threading.Event()
        self.active = 0
        self.max_active = 0

    def stream(self, messages, params, cancel):
        self.calls.append((list(messages), params))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.error is not None and self.fail_after is None:
                raise self.error
            for i, d in enumerate(self.deltas):
                if self.fail_after is not None and i == self.fail_after:
                    raise self.error
                if cancel.cancelled:
                    return
                if self.delay:
                    time.sleep(self.delay)
                self.yielded += 1
                yield d
        finally:
            self.active -= 1
            self.closed.set()


def settings_for(*providers: Provider, default: str | None = None, **style) -> Settings:
    """Settings holding the presets plus the given providers' configs."""
    configs = dict(PRESETS)
    configs.update({p.name: p.config for p in providers})
    base = Settings(providers=configs, default=default or (providers[0].name if providers else "direct"))
    return replace(base, style=replace(base.style, **style)) if style else base
