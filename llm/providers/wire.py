"""Reading the backends' error answers: their own words, the field they blame, Retry-After."""

from __future__ import annotations

import ast
import email.utils
import re
import time
from typing import Any, Mapping


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date); None if absent or bad."""
    try:
        headers = {k.lower(): v for k, v in headers.items()}
        if "retry-after-ms" in headers:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        raw = headers["retry-after"]
        try:
            return max(0.0, float(raw))
        except ValueError:
            return max(0.0, email.utils.parsedate_to_datetime(raw).timestamp() - time.time())
    except (KeyError, AttributeError, ValueError, TypeError, OverflowError):  # absent, not a mapping, bad
        return None


def backend_message(body: Any, default: str) -> str:
    """The backend's own words from an error body: OpenAI's and Gemini's `error.message`, a bare
    `message`, FastAPI's and vLLM's `detail` (a string or a list of problems); else `default`."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        detail = body.get("detail")
        for words in (inner, body.get("message"), detail):
            if isinstance(words, str) and words:
                return words
        if isinstance(detail, list) and detail:
            return "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail[:3])
    return default


READABLE_CHARS = 300
# A Python traceback, or the "File ..., line N" context FastAPI appends to a validation error's text.
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*?\n(?=\S)", re.S)
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+.*(?:\n[ \t]+\S.*)?', re.M)
# One error of a pydantic ValidationError as FastAPI prints it: {'type': ..., 'loc': (...), 'msg': '...', ...}
_PYDANTIC_ERROR = re.compile(r"'loc': (\([^)]*\)), 'msg': ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def readable(text: str) -> str:
    """A backend's error text fit for a client: a validation error as "field: problem", a traceback
    (llama-cpp-python puts one in its 500s) as its last line, never the server's file paths."""
    problems: dict[str, None] = {}     # an ordered set: each problem once
    for loc, msg in _PYDANTIC_ERROR.findall(text):
        try:
            where = ".".join(str(p) for p in ast.literal_eval(loc) if p != "body")
            problems.setdefault(f"{where}: {ast.literal_eval(msg)}")
        except (ValueError, SyntaxError):
            pass
    if problems:
        return "; ".join(list(problems)[:3])
    text = re.sub(r"\n\s*\n", "\n", _FRAME.sub("", _TRACEBACK.sub("", text))).strip()
    return text if len(text) <= READABLE_CHARS else text[:READABLE_CHARS - 1] + "…"


def refused_field(body: Any, text: str) -> str | None:
    """The request field a backend's error blames, if it names one: OpenAI's `error.param`, FastAPI's
    validation `loc` (a 422's `detail`, or its text inside a 500, as llama-cpp-python sends it)."""
    inner = body.get("error") if isinstance(body, dict) else None
    if isinstance(inner, dict) and isinstance(inner.get("param"), str) and inner["param"]:
        return inner["param"].split(".")[0].split("[")[0]
    detail = body.get("detail") if isinstance(body, dict) else None
    for problem in detail if isinstance(detail, list) else ():
        loc = problem.get("loc") if isinstance(problem, dict) else None
        if isinstance(loc, list) and len(loc) > 1 and loc[0] == "body" and isinstance(loc[1], str):
            return loc[1]
    match = re.search(r"'loc': \('body', '(\w+)'", text)
    return match[1] if match else None
