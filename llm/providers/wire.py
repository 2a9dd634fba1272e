"""Reading the backends' wire formats: error bodies and Retry-After, OpenAI-shaped stream chunks (as
the SDKs give them), and OpenAI's `stop` strings for backends that do not cut at them themselves."""

from __future__ import annotations

import email.utils
import time
from typing import Any, Iterable, Mapping

from ..types import StreamEvent


class StopAt:
    """Ends a text stream before the first of some stop strings (OpenAI's `stop`: not part of the reply).
    Holds back just enough text to see a stop string split across deltas."""

    def __init__(self, stops: Iterable[str] | None):
        self.stops = tuple(s for s in stops or () if s)
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.held, self.hit = "", False

    def feed(self, text: str) -> str:
        """The text that is safe to pass on now; after a hit, nothing more."""
        if not self.stops or self.hit:
            return "" if self.hit else text
        self.held += text
        cut = min((i for i in (self.held.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, out, self.held = True, self.held[:cut], ""
            return out
        out, self.held = self.held[:len(self.held) - self.keep], self.held[len(self.held) - self.keep:]
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.hit else self.held), ""
        return out


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent or bad."""
    try:
        headers = {k.lower(): v for k, v in headers.items()}
    except AttributeError:
        return None
    try:
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        raw = headers.get("retry-after")
        if raw is None:
            return None
        try:
            return max(0.0, float(raw))
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw)
            return max(0.0, when.timestamp() - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def backend_message(body: Any, default: str) -> str:
    """The backend's own words from an error body: OpenAI's and Gemini's `error.message`, a bare
    `message`, FastAPI's and vLLM's `detail` (a string or a list of problems); else `default`."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if isinstance(inner, str) and inner:
            return inner
        if isinstance(body.get("message"), str) and body["message"]:
            return body["message"]
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail[:3])
    return default


def delta_text(chunk: Any) -> str:
    """The text of an OpenAI-shaped stream chunk; "" for role-only, usage-only or filter-result chunks."""
    if not chunk.choices or chunk.choices[0].delta is None:
        return ""
    return chunk.choices[0].delta.content or ""


def delta_finished(chunk: Any) -> bool:
    """Whether an OpenAI-shaped stream chunk carries a finish_reason (the end of the reply)."""
    return bool(chunk.choices) and chunk.choices[0].finish_reason is not None


def delta_event(chunk: Any) -> StreamEvent | None:
    """Tool-call deltas, finish reason and usage of an OpenAI-shaped stream chunk (the SDKs' objects)."""
    choice = chunk.choices[0] if chunk.choices else None
    calls = getattr(choice.delta, "tool_calls", None) if choice is not None and choice.delta else None
    usage = getattr(chunk, "usage", None)
    finish = choice.finish_reason if choice is not None else None
    if not (calls or usage or finish):
        return None
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    return StreamEvent(tool_calls=tuple(_plain(c) for c in calls or ()), finish_reason=finish,
                       usage={k: int(getattr(usage, k, 0) or 0) for k in counts} if usage else None)


def _plain(obj: Any) -> dict:
    """An SDK model as a plain dict without its unset (None) fields."""
    return obj.model_dump(exclude_none=True) if hasattr(obj, "model_dump") else dict(obj)
