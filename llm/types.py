"""The value types every part of the project shares: messages, sampling params, stream chunks."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Literal, Mapping

from .errors import InvalidRequestError

Role = Literal["system", "user", "assistant", "tool"]
ROLES = ("system", "user", "assistant", "tool")
DEFAULT_MAX_NEW_TOKENS = 512    # when neither the call nor the provider's config sets one
# OpenAI request fields that never change the answer: accepted by every provider, passed on where they mean
# something (an `openai`-kind upstream), dropped elsewhere.
NEUTRAL_FIELDS = frozenset({"store", "metadata", "user", "service_tier", "safety_identifier",
                            "prompt_cache_key"})


# The one table of sampling bounds (lowest, highest, whole numbers only): GenerationParams checks them for
# every caller (API, page, configs.yaml), and the API's schemas document them (`bounds`). top_p must be > 0.
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "max_new_tokens": (1, 1_000_000, True), "temperature": (0.0, 2.0, False), "top_p": (0.0, 1.0, False),
    "top_k": (0, 1_000_000, True), "repetition_penalty": (0.01, 10.0, False),
    "seed": (-2**63, 2**64 - 1, True), "frequency_penalty": (-2.0, 2.0, False),
    "presence_penalty": (-2.0, 2.0, False)}
_ABOVE = {"top_p"}  # the lowest bound is excluded


def bounds(name: str) -> dict[str, float]:
    """A sampling field's bounds as pydantic's Field arguments."""
    lo, hi, _ = BOUNDS[name]
    return {"gt" if name in _ABOVE else "ge": lo, "le": hi}


# OpenAI's defaults: sending one asks for nothing a provider must honour.
_DEFAULTS = {"logprobs": False, "top_logprobs": 0, "parallel_tool_calls": True, "tool_choice": "auto",
             "response_format": {"type": "text"}}


@dataclass(frozen=True)
class Message:
    """One chat message. An assistant message may carry `tool_calls` (OpenAI's shape); a "tool" message
    answers one of them (`tool_call_id`)."""

    role: Role
    content: str
    tool_calls: tuple[dict, ...] = ()
    tool_call_id: str | None = None
    # The client sent no content (no key, or null: OpenAI reads both the same for an assistant message
    # with tool_calls). Passed on as no key, which every server takes; llama.cpp refuses a null. "" stays "".
    no_content: bool = field(default=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's message shape, its content as the client sent it."""
        out: dict[str, Any] = {"role": self.role}
        if not self.no_content:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out

    @property
    def for_tools(self) -> bool:
        """Part of a tool-calling exchange: only a provider that honours `tools` can take it."""
        return bool(self.tool_calls) or self.role == "tool"


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings. None means "the provider's default"; temperature 0 means greedy."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: tuple[str, ...] | None = None     # end the reply before any of these strings
    seed: int | None = None                 # for reproducible sampling
    frequency_penalty: float | None = None  # OpenAI's penalties, -2..2
    presence_penalty: float | None = None
    # The other OpenAI request fields, as sent (tools, tool_choice, response_format, logit_bias, ...):
    # passed on to an OpenAI-compatible upstream, mapped by the providers that can honour them.
    extra: Mapping[str, Any] | None = None

    def __post_init__(self):
        for name, (lo, hi, whole) in BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidRequestError(f"{name} must be a number, got {type(value).__name__}")
            if whole and not isinstance(value, int):
                raise InvalidRequestError(f"{name} must be an integer, got {value!r}")
            if not math.isfinite(value) or not lo <= value <= hi or (name in _ABOVE and value == lo):
                span = f"> {lo} and <= {hi}" if name in _ABOVE else f"between {lo} and {hi}"
                raise InvalidRequestError(f"{name} must be {span}, got {value!r}")
        if isinstance(self.stop, (str, list)):    # one string, or OpenAI's list: kept as a tuple
            object.__setattr__(self, "stop", (self.stop,) if isinstance(self.stop, str) else tuple(self.stop))
        if self.stop is not None and not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequestError("stop must be a non-empty string or a list of them")

    def asked(self) -> list[str]:
        """The fields set here that change the answer beyond plain sampling: a provider must honour
        each one or refuse the request (`Provider.unsupported`). A value equal to the default is unset."""
        names = [n for n in ("stop", "seed", "frequency_penalty", "presence_penalty") if getattr(self, n)
                 or (n == "seed" and self.seed is not None)]
        for name, value in (self.extra or {}).items():
            if name in NEUTRAL_FIELDS or value in (None, [], {}) or value == _DEFAULTS.get(name):
                continue
            if name in ("tool_choice", "parallel_tool_calls") and not (self.extra or {}).get("tools"):
                continue    # about tools, and there are none
            names.append(name)
        return names

    @property
    def for_program(self) -> bool:
        """Tools, a JSON reply or logprobs asked for: the answer is for a program, not to be spoken (and
        logprobs must match the text as generated)."""
        extra = self.extra or {}
        return bool(extra.get("tools")) or bool(extra.get("logprobs")) or \
            extra.get("response_format", {"type": "text"}) != {"type": "text"}

    def merged_over(self, defaults: Mapping[str, Any]) -> GenerationParams:
        """These params, with the unset ones taken from `defaults` (GenerationParams' fields)."""
        mine = {k: v for k, v in self.__dict__.items() if v is not None}
        return replace(GenerationParams(**defaults), **mine)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class StreamEvent:
    """What a provider's stream says besides text: tool-call deltas (OpenAI's streaming shape, each with
    its `index`), why the reply ended ("stop", "length", "tool_calls", "content_filter"), token usage."""

    tool_calls: tuple[dict, ...] = ()
    finish_reason: str | None = None
    usage: Mapping[str, int] | None = None
    logprobs: tuple[dict, ...] = ()     # OpenAI's logprobs.content entries for the text just before


@dataclass(frozen=True)
class Chunk:
    """One item of a reply stream: a piece of text, the provider that produced it, and when
    (`time.perf_counter()`; a buffered reply arrives later than its text was made). The last chunk
    has no text; it carries `finish_reason` and `usage` (the upstream's token counts, else counted)."""

    text: str
    provider: str
    emotion: str | None = None      # the emotion tag that starts at this text (speech.emotions)
    at: float = field(default_factory=time.perf_counter, compare=False)
    tool_calls: tuple[dict, ...] = ()
    finish_reason: str | None = None
    usage: Mapping[str, int] | None = None
    logprobs: tuple[dict, ...] = ()

    @property
    def substantive(self) -> bool:
        """Part of the answer (text or a tool call), not just news about its end."""
        return bool(self.text or self.tool_calls)


@dataclass(frozen=True)
class ProviderStatus:
    ready: bool
    reason: str = ""
    fix: str = ""
    cooldown_s: float = 0.0     # > 0 while the provider is skipped after failures
    last_error: str = ""        # the failure that started the cooldown
    replicas: tuple[dict, ...] = ()     # a provider with base_urls: each server's state

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def normalize_history(history: Iterable[Any] | None) -> list[Message]:
    """Accept `[[user, bot], ...]` pairs or role/content dicts; return a message list. Content as a list
    of {"type": "text", "text": ...} blocks (as Gradio sends it) is joined."""
    if history is None:
        return []
    if isinstance(history, (str, bytes, dict)):
        raise InvalidRequestError("history must be a list of [user, bot] pairs or role/content messages")
    messages: list[Message] = []
    for i, item in enumerate(history):
        if isinstance(item, Message):
            messages.append(item)
        elif isinstance(item, dict):
            role, content = item.get("role"), item.get("content")
            calls = tuple(item.get("tool_calls") or ())
            content = "" if content is None and (calls or role == "tool") else _text_of(content, i)
            if role not in ROLES:
                raise InvalidRequestError(
                    f"history[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
            call_id = item.get("tool_call_id")
            if role == "tool" and not isinstance(call_id, str):
                raise InvalidRequestError(f"history[{i}]: a tool message needs the tool_call_id it answers")
            messages.append(Message(role, content, calls, call_id if role == "tool" else None,
                                    no_content=item.get("content") is None))
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
