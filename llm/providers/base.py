"""The provider contract: stream text for a message list; report readiness; close."""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import threading
import time
import weakref
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar, Iterable, Iterator, Mapping

from ..errors import (
    CancelledError,
    LLMError,
    MissingKeyError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from ..types import CancelToken, GenerationParams, Message, ProviderStatus, StreamEvent
from .transport import abortable_client, async_client

if TYPE_CHECKING:
    from configs import ProviderConfig

DEFAULT_CONTEXT_WINDOW = 8192
DEFAULT_TIMEOUT = 30.0      # seconds per connect/read when `timeout` is unset (the SDKs would wait 600)
_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")


class Provider(ABC):
    """A backend. Subclasses implement `stream`; everything else has a sensible default.

    `stream` is a generator of text deltas. When the caller closes it early (budget reached,
    cancel, client gone) the generator's `finally` must stop the upstream work: stop generating
    tokens or close the HTTP stream. Providers also check `cancel` between deltas.
    """

    kind: ClassVar[str]
    style_mode: ClassVar[str] = "system"        # how the speech style is given: system | prefix
    default_concurrency: ClassVar[int | None] = None   # None: no limit
    supports_async: ClassVar[bool] = False      # True: `astream` runs on the event loop, no thread
    styled: ClassVar[bool] = True               # False: the speech style never applies
    verbatim: ClassVar[bool] = False            # True: the text is passed on exactly as it came
    # Reliability defaults for this kind (seconds; None = no deadline); a config value overrides them.
    default_retries: ClassVar[int] = 0
    default_first_token_timeout: ClassVar[float | None] = None
    default_stall_timeout: ClassVar[float | None] = None
    # The OpenAI request fields beyond sampling (GenerationParams.asked) this kind can honour.
    honours: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None = None):
        self.config = config
        self.name = config.name
        self.env = os.environ if env is None else env

    @abstractmethod
    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str | StreamEvent]:
        """Yield the reply as text deltas; "" may come too, as a sign of life (e.g. a reasoning chunk).
        A StreamEvent carries tool-call deltas, the finish reason or token usage, when the backend says."""

    def unsupported(self, params: GenerationParams) -> str | None:
        """The first field the call asks for that this provider cannot honour; None when it can honour all.
        Never dropped silently: the router refuses the request naming it."""
        return next((name for name in params.asked() if name not in self.honours), None)

    def status(self) -> ProviderStatus:
        """Ready, or not ready with the reason and the fix. Must be cheap and never load a model."""
        if self.config.api_key_env and not self.config.base_url:
            try:
                self.api_key()
            except MissingKeyError as e:
                return ProviderStatus(False, e.message, e.fix)
        return ProviderStatus(True)

    def api_key(self, required: bool = True) -> str | None:
        """The key from the first set env var of `api_key_env`; MissingKeyError naming them otherwise."""
        for var in self.config.api_key_env:
            value = self.env.get(var, "").strip()
            if value:
                return value
        if not required or not self.config.api_key_env:
            return None
        names = " or ".join(self.config.api_key_env)
        raise MissingKeyError(f"{names} is not set",
                              fix=f"export {self.config.api_key_env[0]}=... "
                                  "or set api_key_env in configs.yaml")

    # ---- the shared vocabulary of upstream failures; each backend maps its SDK onto these ----

    @property
    def base_url(self) -> str:
        return self.config.base_url or ""

    def timeout_error(self) -> LLMError:
        return UpstreamTimeoutError(f"{self.name}: no answer from {self.base_url} in time",
                                    fix="raise timeout in configs.yaml or retry later")

    def unreachable_error(self, lost: bool = False, text_seen: bool = False) -> LLMError:
        if lost:
            when = "mid-reply" if text_seen else "before any text"
            return UpstreamError(f"{self.name}: the connection to {self.base_url} was lost {when}",
                                 transient=True, fix="retry; check the server's logs if it keeps happening")
        return UpstreamError(f"{self.name}: cannot reach {self.base_url}", transient=True,
                             fix="check base_url, the network and that the server is running")

    def status_error(self, status: int, detail: str, key_rejected: bool = False,
                     headers: Mapping[str, str] | None = None) -> LLMError:
        """The typed error for an HTTP error status from the backend, keeping that status
        (and its Retry-After, from `headers`)."""
        detail = self.scrub(detail)
        retry_after = retry_after_seconds(headers or {})
        if status in (401, 403) or key_rejected:
            if not self.config.api_key_env:     # e.g. a vLLM server started with --api-key
                return UpstreamError(f"{self.name}: {self.base_url} wants an API key ({status})",
                                     upstream_status=status, fix="name the key's env var in api_key_env")
            env = self.config.api_key_env[0]
            return UpstreamError(f"{self.name}: the API key was rejected ({status}); check {env}",
                                 upstream_status=status, fix=f"export {env}=<a valid key>")
        if status == 429:
            return RateLimitError(f"{self.name}: rate limited: {detail}", upstream_status=429,
                                  retry_after=retry_after, fix="wait and retry, or raise the account's quota")
        if status == 404:
            return UpstreamError(f"{self.name}: model {self.config.model!r} not found at {self.base_url}",
                                 upstream_status=404, fix="check model in configs.yaml")
        return UpstreamError(f"{self.name}: the server answered {status}: {detail}", upstream_status=status,
                             retry_after=retry_after)

    def scrub(self, text: str) -> str:
        """`text` with this provider's API key masked: keys never reach logs or callers."""
        key = self.api_key(required=False)
        return text.replace(key, "***") if key else text

    @property
    def style(self) -> str:
        return self.config.style_mode or self.style_mode

    @property
    def context_window(self) -> int:
        return self.config.context_window or DEFAULT_CONTEXT_WINDOW

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of a message list: each message's text plus ~4 for its role and framing."""
        return sum(4 + self.text_tokens(m.content) for m in messages)

    def text_tokens(self, text: str) -> int:
        """An estimate for backends without a local tokenizer: a CJK char ~ 1 token, else 4 chars ~ 1."""
        cjk = len(_CJK.findall(text))
        return cjk + (len(text) - cjk + 3) // 4

    def fit(self, messages: list[Message], reserve: int) -> list[Message]:
        """Drop the oldest non-system turns until the messages plus `reserve` new tokens fit
        (at most half the window is reserved for the reply, so history is not starved)."""
        budget = self.context_window - min(reserve, self.context_window // 2)
        system = [m for m in messages if m.role == "system"]
        rest = [m for m in messages if m.role != "system"]
        while len(rest) > 1 and self.count_tokens(system + rest) > budget:
            whole_turn = len(rest) > 2 and rest[0].role == "user" and rest[1].role == "assistant"
            rest = rest[2:] if whole_turn else rest[1:]
        return system + rest

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients or weights."""


class CloudProvider(Provider):
    """A backend reached through an SDK client: one shared client, one stream loop, one error path.

    Subclasses supply the connection (`make_client`) and the wire format (`open_stream`,
    `chunk_text`) and map their SDK's exceptions in `translate`.
    """

    default_base_url: ClassVar[str] = ""
    key_required: ClassVar[bool] = True     # False: a custom base_url may need no key
    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    lazy_stream: ClassVar[bool] = False     # True: open_stream sends nothing until iterated
    default_retries = 2
    default_first_token_timeout = 20.0
    default_stall_timeout = 15.0

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None = None):
        super().__init__(config, env)
        self._client: Any = None
        self._http: Any = None
        self._lock = threading.Lock()
        # one async client per event loop (the API's, Gradio's): a connection belongs to its loop
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def base_url(self) -> str:
        # Explicit, so an SDK never picks up a *_BASE_URL env var behind the config's back.
        return self.config.base_url or self.default_base_url

    def status(self) -> ProviderStatus:
        if self.key_required:
            try:
                self.api_key()
            except MissingKeyError as e:
                return ProviderStatus(False, e.message, e.fix)
        return super().status()

    def client(self) -> Any:
        """The SDK client, created on first use and shared (the SDK clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                self._http = abortable_client(self.http_module(), self.timeout)
                self._client = self.make_client(self._http)
            return self._client

    def async_client(self) -> Any:
        """The async SDK client for the running event loop, created on first use there."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pair = self._aclients.get(loop)
            if pair is None:
                http = async_client(self.http_module(), self.timeout)
                pair = self._aclients[loop] = (self.make_async_client(http), http)
            return pair[0]

    def make_async_client(self, http: Any) -> Any:
        """A new async SDK client that sends through the async `http` client (kinds with `supports_async`)."""
        return http

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._http.close()      # not every SDK closes a client it was given
                self._client = self._http = None
            aclients, self._aclients = list(self._aclients.items()), weakref.WeakKeyDictionary()
        for loop, (_, http) in aclients:    # closed on their own loop, if it still runs
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(http.aclose(), loop)

    def http_module(self) -> Any:
        """The httpx package this SDK sends through: httpx2 when installed (openai, google-genai)."""
        return _HTTPX[-1]

    @property
    def timeout(self) -> float:
        """Seconds for one connect or read: the config's `timeout`, else a default fit for a live avatar."""
        return self.config.timeout or DEFAULT_TIMEOUT

    @abstractmethod
    def make_client(self, http: Any) -> Any:
        """A new SDK client for this config that sends through `http` (so a cancel reaches the
        socket: see `transport`), with SDK retries off (the router's policy retries)."""

    @abstractmethod
    def open_stream(self, messages: list[Message], params: GenerationParams) -> Iterable[Any]:
        """Start the SDK's streaming call."""

    @abstractmethod
    def chunk_text(self, chunk: Any) -> str:
        """The text of one stream chunk ("" for role-only or metadata chunks)."""

    @abstractmethod
    def chunk_finished(self, chunk: Any) -> bool:
        """Whether this chunk carries the stream's end marker (a finish reason)."""

    def chunk_event(self, chunk: Any, state: dict) -> StreamEvent | None:
        """Tool calls, finish reason or usage in this chunk, in OpenAI's terms (None: nothing of that).
        `state` is this stream's own scratch dict (e.g. to number tool calls across chunks)."""
        return None

    @abstractmethod
    def translate(self, e: BaseException) -> LLMError:
        """The typed error for an SDK exception, without the API key in its text."""

    def close_stream(self, response: Any) -> None:
        response.close()    # closes the HTTP stream, so the server stops generating

    def content_type(self, response: Any) -> str:
        """The stream's HTTP Content-Type, when the SDK exposes it ("" otherwise)."""
        http = getattr(response, "response", None)
        return str(getattr(http, "headers", {}).get("content-type", ""))

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str]:
        """The reply's text; a stream that ends without its end marker is an error, never a short reply."""
        if cancel.cancelled:
            raise CancelledError("generation cancelled")
        response, seen = None, _Seen()
        try:
            response = self.open_stream(messages, params)
            for chunk in response:
                if cancel.cancelled:
                    raise CancelledError("generation cancelled")
                yield from seen.take(self, chunk)
            if not seen.finished:
                raise self.unfinished_error(response, seen.text)
        except (*self.sdk_errors, *TRANSPORT_ERRORS) as e:
            raise self.failure(e, cancel, response, seen) from e
        finally:
            if response is not None:
                self.close_stream(response)

    async def astream(self, messages: list[Message], params: GenerationParams,
                      cancel: CancelToken) -> AsyncIterator[str | StreamEvent]:
        """`stream` on the event loop, for kinds with `supports_async` (no thread per request).
        Cancelling the task that iterates it closes the HTTP stream."""
        if cancel.cancelled:
            raise CancelledError("generation cancelled")
        response, seen = None, _Seen()
        try:
            response = await self.aopen_stream(messages, params)
            async for chunk in response:
                for item in seen.take(self, chunk):
                    yield item
            if not seen.finished:
                raise self.unfinished_error(response, seen.text)
        except (*self.sdk_errors, *TRANSPORT_ERRORS) as e:
            raise self.failure(e, cancel, response, seen) from e
        finally:
            if response is not None:
                await response.aclose()

    async def aopen_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        """Start the streaming call on the event loop (kinds with `supports_async`)."""
        raise NotImplementedError

    def failure(self, e: BaseException, cancel: CancelToken, response: Any, seen: _Seen) -> LLMError:
        """The typed error for an SDK or transport exception met while streaming."""
        if cancel.cancelled:    # the cancel shut the socket: that is not the backend's fault
            return CancelledError("generation cancelled")
        error = self.transport_error(e) if isinstance(e, TRANSPORT_ERRORS) else self.translate(e)
        lost = isinstance(error, UpstreamError) and error.transient and error.upstream_status is None
        connected = seen.chunk or (response is not None and not self.lazy_stream)
        if connected and lost and not isinstance(error, UpstreamTimeoutError):
            # the SDKs call a cut mid-stream a "connection error": it did connect, then lost it
            error = self.unreachable_error(lost=True, text_seen=seen.text)
        return error

    def unfinished_error(self, response: Any, text_seen: bool) -> LLMError:
        ctype = self.content_type(response).split(";")[0].strip()
        if ctype and ctype != "text/event-stream":
            return UpstreamError(f"{self.name}: {self.base_url} answered with {ctype}, not an event stream",
                                 upstream_status=200, fix="check base_url: it should be the API's root")
        what = "mid-reply" if text_seen else "before any text"
        return UpstreamError(f"{self.name}: the reply stream ended {what}, without its end marker",
                             upstream_status=200, transient=True,
                             fix="retry; check the server's logs if it keeps happening")

    def transport_error(self, e: BaseException) -> LLMError:
        """A transport failure the SDK did not wrap (it happens while reading the stream)."""
        if isinstance(e, TIMEOUT_ERRORS):
            return self.timeout_error()
        return self.unreachable_error(lost=not isinstance(e, CONNECT_ERRORS))


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


class _Seen:
    """What one stream has shown so far: a chunk, text (or a tool call), its end marker."""

    def __init__(self) -> None:
        self.chunk = self.text = self.finished = False
        self.state: dict = {}   # the provider's scratch space for this stream (chunk_event)

    def take(self, provider: CloudProvider, chunk: Any) -> list[str | StreamEvent]:
        """The chunk's text ("" too: a reasoning or keep-alive chunk says the backend is alive, for the
        stall clock), then its StreamEvent if it has one."""
        self.chunk = True
        self.finished = self.finished or provider.chunk_finished(chunk)
        text = provider.chunk_text(chunk)
        event = provider.chunk_event(chunk, self.state)
        self.text = self.text or bool(text) or bool(event and event.tool_calls)
        return [text] if event is None else [text, event]


def _httpx_modules() -> tuple[Any, ...]:
    import httpx
    try:    # openai and google-genai send through httpx2 when it is installed
        import httpx2
    except ImportError:  # pragma: no cover - depends on the environment
        return (httpx,)
    return (httpx, httpx2)


_HTTPX = _httpx_modules()
TRANSPORT_ERRORS = tuple(m.TransportError for m in _HTTPX)
TIMEOUT_ERRORS = tuple(m.TimeoutException for m in _HTTPX)
CONNECT_ERRORS = tuple(m.ConnectError for m in _HTTPX)


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
