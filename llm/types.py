"""The value types every part of the project shares: messages, sampling params, stream chunks."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Literal

from .errors import InvalidRequestError

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 512    # when neither the call nor the provider's config sets one


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings. None means "the provider's default"; temperature 0 means greedy."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self):
        _check_range("max_new_tokens", self.max_new_tokens, 1, 1_000_000, integer=True)
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_k", self.top_k, 0, 1_000_000, integer=True)
        _check_range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)
        if self.top_p is not None:
            _check_range("top_p", self.top_p, 0.0, 1.0)
            if self.top_p <= 0:
                raise InvalidRequestError("top_p must be > 0 and <= 1")

    def merged_over(self, defaults: GenerationParams | dict | None) -> GenerationParams:
        """These params, with the unset ones taken from `defaults`."""
        if defaults is None:
            return self
        if isinstance(defaults, dict):
            defaults = GenerationParams(**defaults)
        mine = {k: v for k, v in self.__dict__.items() if v is not None}
        return replace(defaults, **mine)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_range(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{name} must be a number, got {type(value).__name__}")
    if integer and not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidRequestError(f"{name} must be between {lo} and {hi}, got {value!r}")


@dataclass(frozen=True)
class Chunk:
    """One item of a reply stream: a piece of text, the provider that produced it, and when
    (`time.perf_counter()`; a buffered reply arrives later than its text was made)."""

    text: str
    provider: str
    emotion: str | None = None      # the emotion tag that starts at this text (speech.emotions)
    at: float = field(default_factory=time.perf_counter, compare=False)


@dataclass
class Reply:
    text: str
    provider: str
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ProviderStatus:
    ready: bool
    reason: str = ""
    fix: str = ""
    cooldown_s: float = 0.0     # > 0 while the provider is skipped after failures
    last_error: str = ""        # the failure that started the cooldown

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "reason": self.reason, "fix": self.fix, "cooldown_s": self.cooldown_s,
                "last_error": self.last_error}


class CancelToken:
    """A per-call cancel flag shared between the caller and the generating thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list = []
        self._lock = threading.Lock()

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback) -> None:
        """Call `callback` once when cancelled (at once if already cancelled): lets a waiter wake up."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)
                return
        callback()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


def normalize_history(history: Iterable[Any] | None) -> list[Message]:
    """Accept `[[user, bot], ...]` pairs or role/content dicts; return a message list.

    Gradio sends content as a list of {"type": "text", "text": ...} blocks: those are joined.
    """
    if history is None:
        return []
    if isinstance(history, (str, bytes, dict)):
        raise InvalidRequestError("history must be a list of [user, bot] pairs or role/content messages")
    messages: list[Message] = []
    for i, item in enumerate(history):
        if isinstance(item, Message):
            messages.append(item)
        elif isinstance(item, dict):
            role, content = item.get("role"), _text_of(item.get("content"), i)
            if role not in ROLES:
                raise InvalidRequestError(
                    f"history[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            messages.append(Message(role, content))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            user, bot = item
            if user is not None:
                messages.append(Message("user", _text_of(user, i)))
            if bot is not None:
                messages.append(Message("assistant", _text_of(bot, i)))
        else:
            raise InvalidRequestError(
                f"history[{i}] must be a [user, bot] pair or a {{role, content}} message, got {item!r:.60}")
    return messages


def _text_of(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return "".join(str(b.get("text", "")) for b in content if b.get("type", "text") == "text")
    raise InvalidRequestError(f"history[{index}] content must be text, got {type(content).__name__}")


def history_pairs(messages: Iterable[Message]) -> list[list[str]]:
    """Messages back to `[[user, bot], ...]` pairs (system messages dropped), for seed-style clients."""
    pairs: list[list[str]] = []
    for m in messages:
        if m.role == "user":
            pairs.append([m.content, ""])
        elif m.role == "assistant":
            if pairs and pairs[-1][1] == "":
                pairs[-1][1] = m.content
            else:
                pairs.append(["", m.content])
    return pairs
