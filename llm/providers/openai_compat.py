"""ChatGPT and every OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp) through `base_url`.

Plain aiohttp, not the openai SDK: on this hot path (a router in front of vLLM) its request building and
pydantic object per chunk cost ~3 ms and ~0.4 ms of CPU per request and chunk."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp

try:    # 3-4x faster than json on the stream's events (a dependency of gradio, so usually present)
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    from json import loads as _loads

from ..errors import LLMError, UpstreamError
from ..types import GenerationParams, Message, StreamEvent
from . import KINDS
from .cloud import CloudProvider
from .transport import DRAIN_TIMEOUT, aiohttp_session
from .wire import backend_message, readable, refused_field

# Local servers ignore the key; some proxies in front of them want a bearer token all the same.
PLACEHOLDER_KEY = "sk-no-key-required"


class StreamError(Exception):
    """The backend reported an error inside a 200 event stream, or sent an event that is not JSON."""


class OpenAIProvider(CloudProvider):
    kind = "openai"
    style_mode = "system"
    default_base_url = "https://api.openai.com/v1"
    key_required = False        # vLLM, Ollama and llama.cpp servers need no key
    sdk_errors = (StreamError, aiohttp.ClientError)     # aiohttp's: transport errors on the event loop
    honours = KINDS["openai"].honours   # None: every OpenAI field is passed on as sent

    def new_client(self) -> tuple[aiohttp.ClientSession, Any]:
        session = aiohttp_session(self.timeout, self.base_url)
        return session, session.close

    async def open_stream(self, messages: list[Message], params: GenerationParams) -> EventStream:
        """Send the request; an error status is raised here as the typed error, with the backend's words."""
        key = self.api_key(required=not self.config.base_url) or PLACEHOLDER_KEY
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        body = json.dumps(self.request_body(messages, params), ensure_ascii=False).encode()
        response = await self.client().post(f"{self.base_url.rstrip('/')}/chat/completions", data=body,
                                            headers=headers)
        if response.status >= 400:
            try:
                detail, field = _detail((await response.read()).decode(errors="replace"))
                response.raise_for_status()
            except aiohttp.ClientResponseError as e:
                raise self.status_error(response.status, detail, headers=response.headers, field=field) from e
            finally:
                response.release()
        return EventStream(response)

    def chunk_text(self, chunk: dict) -> str:
        return (_choice(chunk).get("delta") or {}).get("content") or ""

    def chunk_finished(self, chunk: dict) -> bool:
        return _choice(chunk).get("finish_reason") is not None

    def chunk_event(self, chunk: dict, state: dict) -> StreamEvent | None:
        choice, usage = _choice(chunk), chunk.get("usage")
        calls, finish = (choice.get("delta") or {}).get("tool_calls"), choice.get("finish_reason")
        logprobs = (choice.get("logprobs") or {}).get("content")
        if not (calls or finish or usage or logprobs):
            return None
        counts = ("prompt_tokens", "completion_tokens", "total_tokens")
        usage = {k: int(usage.get(k) or 0) for k in counts} if isinstance(usage, dict) else None
        calls = tuple(_call_delta(call, state.setdefault("calls", {})) for call in calls or ())
        return StreamEvent(tool_calls=calls, finish_reason=finish, usage=usage,
                           logprobs=tuple(logprobs or ()))

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions JSON for these messages and params. The OpenAI fields beyond sampling
        (tools, response_format, logit_bias, ...) are sent as the client sent them."""
        # temperature 0 is sent as is: OpenAI and vLLM treat it as greedy decoding.
        body = self._body(messages, temperature=params.temperature, top_p=params.top_p,
                          max_tokens=params.max_new_tokens, seed=params.seed,
                          frequency_penalty=params.frequency_penalty,
                          presence_penalty=params.presence_penalty,
                          stop=list(params.stop) if params.stop else None)
        if self.config.stream_usage:    # the usage chunk (stream_options.include_usage)
            body["stream_options"] = {"include_usage": True}
        body |= params.extra or {}
        if self.config.base_url:    # vLLM's sampling extensions; api.openai.com rejects them
            body |= {k: v for k, v in (("top_k", params.top_k),
                                       ("repetition_penalty", params.repetition_penalty)) if v is not None}
        return body

    def _body(self, messages: list[Message], **fields: Any) -> dict[str, Any]:
        """The chat.completions JSON's head (model, messages, stream) and those of `fields` that are set."""
        return {"model": self.config.model, "messages": [m.as_dict() for m in messages], "stream": True,
                **{name: value for name, value in fields.items() if value is not None}}

    def translate(self, e: BaseException) -> LLMError:
        """An in-stream error event (`StreamError`), or an aiohttp transport error read as its httpx2 twin."""
        if isinstance(e, aiohttp.ServerTimeoutError):
            return self.timeout_error()
        if isinstance(e, aiohttp.ClientError):
            never_connected = isinstance(e, (aiohttp.ClientConnectorError, aiohttp.InvalidURL))
            return self.unreachable_error(lost=not never_connected)
        return UpstreamError(f"{self.name}: {self.scrub(readable(str(e)))}", upstream_status=200)


def _call_delta(call: dict, named: dict[int, bool]) -> dict:
    """A streamed tool-call delta as OpenAI sends it: id, type and name on the call's first delta only.
    llama.cpp's server repeats them in every delta, and a client joins what it is sent (the openai SDK's
    stream helpers, LangChain): names are not deltas, so a repeat is dropped here."""
    call = {k: v for k, v in call.items() if v is not None}
    index = call.get("index", 0)
    if named.get(index):
        call = {k: v for k, v in call.items() if k not in ("id", "type")}
        if isinstance(call.get("function"), dict):
            call["function"] = {k: v for k, v in call["function"].items() if k != "name"}
    elif (call.get("function") or {}).get("name"):
        named[index] = True
    return call


def _detail(body: str) -> tuple[str, str | None]:
    """The backend's own words from an error body (its JSON error message, else the start of the text),
    and the request field it blames, if it names one."""
    try:
        data = _loads(body)
    except ValueError:
        data = None
    message = backend_message(data, body[:2000])
    return message, refused_field(data, message)


class EventStream:
    """An OpenAI-style event stream over an aiohttp `response` (unfinished_error reads its content-type), as
    plain dicts, one per `data:` line, up to `data: [DONE]`. Plain text deltas of one network read are merged
    (`_merge`): a burst costs one pass through the router, not one per token; a lone delta goes at once.
    After [DONE] it drains the rest (DRAIN_TIMEOUT at most), so the connection is pooled again."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response

    async def __aiter__(self) -> AsyncIterator[dict]:
        content, rest, done = self.response.content, b"", False
        while not done:
            data = await content.readany()
            if not data:    # the body ended; a last line without its newline still counts
                lines, rest = [rest] if rest else [], b""
                done = True
            else:
                *lines, rest = (rest + data).split(b"\n")
            held = held_delta = None
            for line in lines:
                chunk = _event(line.decode("utf-8", errors="replace"))
                if chunk is _DONE:
                    done = True
                    break
                if chunk is None:
                    continue
                delta = _plain_delta(chunk)
                if _merge(held_delta, delta):
                    continue
                if held is not None:
                    yield held
                held, held_delta = chunk, delta
            if held is not None:
                yield held
        if not content.at_eof():
            try:
                await asyncio.wait_for(content.read(), DRAIN_TIMEOUT)
            except (asyncio.TimeoutError, aiohttp.ClientError):
                pass    # the connection is dropped instead of reused

    async def aclose(self) -> None:
        if self.response.content.at_eof():
            self.response.release()     # back to the pool
        else:
            self.response.close()       # cut: that is what stops the upstream generating


def _merge(held: dict | None, added: dict | None) -> bool:
    """Append `added`'s text to `held` when both are plain deltas and `added` has no role; else False."""
    if held is None or added is None or added.keys() != {"content"}:
        return False
    held["content"] = (held.get("content") or "") + added["content"]
    return True


def _plain_delta(chunk: dict) -> dict | None:
    """The delta of a chunk that carries text (and perhaps the role) only, else None."""
    choices = chunk.get("choices")
    if not choices or len(choices) != 1 or chunk.get("usage"):
        return None
    choice = choices[0]
    delta = choice.get("delta") if isinstance(choice, dict) else None
    if (not isinstance(delta, dict) or choice.get("finish_reason") is not None or choice.get("logprobs")
            or choice.get("index", 0) != 0 or not isinstance(delta.get("content", ""), str)):
        return None
    return delta if delta.keys() <= {"role", "content"} else None


_DONE = object()


def _event(line: str) -> dict | object | None:
    """One SSE line: a chunk dict, _DONE, or None for blank lines, comments (keep-alives) and `event:`."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _DONE
    try:
        chunk = _loads(data)
    except ValueError:
        chunk = None
    if not isinstance(chunk, dict):
        raise StreamError(f"unreadable stream event: {data[:80]!r}")
    if chunk.get("error"):      # an error reported inside a 200 stream
        raise StreamError(backend_message(chunk, "error in the stream"))
    return chunk


def _choice(chunk: dict) -> dict:
    choices = chunk.get("choices")
    return choices[0] if choices and isinstance(choices[0], dict) else {}
