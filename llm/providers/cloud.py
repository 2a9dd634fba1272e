"""CloudProvider: a backend reached through an async client (an SDK's or plain HTTP), one per event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import weakref
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, AsyncIterator, ClassVar, Mapping

import httpx2

from ..errors import CancelledError, LLMError, UpstreamError, UpstreamTimeoutError
from ..types import CancelToken, GenerationParams, Message, StreamEvent
from .base import DEFAULT_TIMEOUT, Provider

if TYPE_CHECKING:
    from configs import ProviderConfig


class CloudProvider(Provider):
    """One async client per event loop, one stream loop, one error path. Subclasses supply the connection
    (`new_client`) and the wire format (`open_stream`, `chunk_*`) and map their SDK's errors (`translate`)."""

    key_required = True
    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    lazy_stream: ClassVar[bool] = False     # True: open_stream sends nothing until iterated
    default_retries = 2
    default_first_token_timeout = 20.0
    default_stall_timeout = 15.0

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None = None):
        super().__init__(config, env)
        self._lock = threading.Lock()
        # one async client per event loop (the API's, Gradio's): a connection belongs to its loop
        self._aclients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def client(self) -> Any:
        """The async SDK client for the running event loop, created on first use there."""
        loop = asyncio.get_running_loop()
        with self._lock:
            pair = self._aclients.get(loop)
            if pair is None:
                pair = self._aclients[loop] = self.new_client()
            return pair[0]

    @abstractmethod
    def new_client(self) -> tuple[Any, Callable[[], Awaitable[Any]]]:
        """A new async client for the running loop (an SDK's with its retries off: the router's policy
        retries), and the coroutine function that closes it."""

    async def aclose_loop(self) -> None:
        with self._lock:
            pair = self._aclients.pop(asyncio.get_running_loop(), None)
        if pair is not None:
            await pair[1]()

    def close(self) -> None:
        with self._lock:
            aclients, self._aclients = list(self._aclients.items()), weakref.WeakKeyDictionary()
        for loop, (_, aclose) in aclients:
            if loop.is_running():   # on their own loop
                asyncio.run_coroutine_threadsafe(aclose(), loop)
            elif loop.is_closed():  # its sockets went with it: mark the client closed, so no warning says
                # "Unclosed client session" at exit (the Gradio page's loop); best effort
                with contextlib.suppress(Exception):
                    asyncio.run(aclose())

    @property
    def timeout(self) -> float:
        """Seconds for one connect or read: the config's `timeout`, else a default fit for a live avatar."""
        return self.config.timeout or DEFAULT_TIMEOUT

    @abstractmethod
    async def open_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        """Start the streaming call: an async iterable of chunks with an `aclose()`."""

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

    async def astream(self, messages: list[Message], params: GenerationParams,
                      cancel: CancelToken) -> AsyncIterator[str | StreamEvent]:
        """The reply's text; a stream that ends without its end marker is an error, never a short reply.
        Cancelling the task that iterates it (or closing it) closes the HTTP stream."""
        if cancel.cancelled:
            raise CancelledError("generation cancelled")
        response, seen = None, _Seen()
        try:
            response = await self.open_stream(messages, params)
            async for chunk in response:
                if cancel.cancelled:
                    raise CancelledError("generation cancelled")
                for item in seen.take(self, chunk):
                    yield item
            if not seen.finished:
                raise self.unfinished_error(response, seen.text)
        except (*self.sdk_errors, httpx2.TransportError) as e:
            raise self.failure(e, cancel, response, seen) from e
        finally:
            if response is not None:
                await response.aclose()

    def failure(self, e: BaseException, cancel: CancelToken, response: Any, seen: _Seen) -> LLMError:
        """The typed error for an SDK or transport exception met while streaming."""
        if cancel.cancelled:    # the cancel shut the socket: that is not the backend's fault
            return CancelledError("generation cancelled")
        if _untrusted_certificate(e):
            return UpstreamError(f"{self.name}: the TLS certificate of {self.base_url} is not trusted",
                                 fix="if it is signed by your own (or a company) CA, set SSL_CERT_FILE to "
                                     "that CA's PEM file; else check base_url")
        if isinstance(e, httpx2.TimeoutException):     # transport errors the SDK did not wrap (while reading)
            error = self.timeout_error()
        elif isinstance(e, httpx2.TransportError):
            error = self.unreachable_error(lost=not isinstance(e, httpx2.ConnectError))
        else:
            error = self.translate(e)
        lost = isinstance(error, UpstreamError) and error.transient and error.upstream_status is None
        connected = seen.chunk or (response is not None and not self.lazy_stream)
        if connected and lost and not isinstance(error, UpstreamTimeoutError):
            # the SDKs call a cut mid-stream a "connection error": it did connect, then lost it
            error = self.unreachable_error(lost=True, text_seen=seen.text)
        return error

    def unfinished_error(self, response: Any, text_seen: bool) -> LLMError:
        # the stream's HTTP Content-Type, where the response exposes one
        headers = getattr(getattr(response, "response", None), "headers", {})
        ctype = str(headers.get("content-type", "")).split(";")[0].strip()
        if ctype and ctype != "text/event-stream":
            return UpstreamError(f"{self.name}: {self.base_url} answered with {ctype}, not an event stream",
                                 upstream_status=200, fix="check base_url: it should be the API's root")
        what = "mid-reply" if text_seen else "before any text"
        return UpstreamError(f"{self.name}: the reply stream ended {what}, without its end marker",
                             upstream_status=200, transient=True,
                             fix="retry; check the server's logs if it keeps happening")


def _untrusted_certificate(e: BaseException | None) -> bool:
    """Whether a certificate check failed somewhere in `e`'s chain (both HTTP stacks wrap ssl's error)."""
    for _ in range(8):
        if e is None or isinstance(e, ssl.SSLCertVerificationError):
            return e is not None
        e = e.__cause__ or e.__context__ or getattr(e, "os_error", None)
    return False


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
