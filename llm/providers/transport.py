"""HTTP clients whose blocking socket calls a cancel can interrupt, for the cloud SDKs.

A sync SDK call blocks its thread in `recv` while it waits for response headers or the next
chunk, and closing the response object from another thread cannot reach it then. Here every
socket read or write made while an `abort_scope(cancel)` is active registers its socket; a cancel
shuts those sockets down, so the blocked call fails at once, the thread ends, and the connection
leaves the pool. Requests outside a scope behave exactly as before.

Both HTTP stacks are covered: httpx/httpcore (zhipuai) and httpx2/httpcore2 (openai, google-genai).
On the event loop none of this is needed (cancelling the task interrupts the read): `async_client` is
httpx2's for google-genai, and `aiohttp_session` serves the OpenAI-compatible kind's hot path.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..types import CancelToken

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 10.0      # seconds; a dead host must not hold a thread for the read timeout
DRAIN_TIMEOUT = 0.25        # seconds to read what follows an event stream's [DONE] before dropping it
MAX_CONNECTIONS = 256       # per client: every stream holds one
KEEPALIVE_SECONDS = 30      # an idle pooled connection is closed after this
_scope: contextvars.ContextVar[_AbortScope | None] = contextvars.ContextVar("llm_abort_scope", default=None)


class _AbortScope:
    """The sockets one upstream call is blocked on; `abort` shuts them and fails every later call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.aborted = False

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            socks = list(self._socks)
        for sock in socks:
            _shutdown(sock)

    @contextmanager
    def using(self, sock: socket.socket | None, error: type[Exception]) -> Iterator[None]:
        with self._lock:
            if self.aborted:
                raise error("the request was cancelled")
            if sock is not None:
                self._socks.add(sock)
        try:
            yield
        except Exception as e:
            if self.aborted:    # the shutdown made the call fail: say why
                raise error("the request was cancelled") from e
            raise
        finally:
            with self._lock:
                self._socks.discard(sock)


@contextmanager
def abort_scope(cancel: CancelToken) -> Iterator[None]:
    """Within this block (in this thread), cancelling `cancel` interrupts the HTTP calls it makes."""
    scope = _AbortScope()
    token = _scope.set(scope)
    cancel.on_cancel(scope.abort)
    try:
        yield
    finally:
        _scope.reset(token)


def _shutdown(sock: socket.socket) -> None:
    try:    # the plain socket method: SSLSocket.shutdown would also tear down TLS state mid-read
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass    # already closed


class _Stream:
    """A network stream of either httpcore that registers with the current abort scope."""

    def __init__(self, inner: Any, core: Any):
        self._inner, self._core = inner, core

    def _guard(self, error: type[Exception]):
        scope = _scope.get()
        if scope is None:
            return _nothing()
        return scope.using(self._inner.get_extra_info("socket"), error)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with self._guard(self._core.ReadError):
            return self._inner.read(max_bytes, timeout)

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with self._guard(self._core.WriteError):
            self._inner.write(buffer, timeout)

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> _Stream:
        with self._guard(self._core.ConnectError):
            return _Stream(self._inner.start_tls(ssl_context, server_hostname, timeout), self._core)

    def close(self) -> None:
        self._inner.close()

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend:
    """Wraps a sync network backend so every stream it opens is a `_Stream`."""

    def __init__(self, inner: Any, core: Any):
        self._inner, self._core = inner, core

    def connect_tcp(self, *args: Any, **kwargs: Any) -> _Stream:
        scope = _scope.get()
        if scope is not None and scope.aborted:
            raise self._core.ConnectError("the request was cancelled")
        return _Stream(self._inner.connect_tcp(*args, **kwargs), self._core)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> _Stream:
        return _Stream(self._inner.connect_unix_socket(*args, **kwargs), self._core)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _sync_stream_bases() -> tuple[type, ...]:
    """httpx checks a response body's type: be a SyncByteStream of both stacks."""
    import importlib
    bases = []
    for name in ("httpx", "httpx2"):
        try:
            bases.append(importlib.import_module(name).SyncByteStream)
        except ImportError:  # pragma: no cover - depends on the environment
            pass
    return tuple(bases)


class _ReusableStream(*_sync_stream_bases()):
    """A response body that, closed just after its SSE `data: [DONE]`, first reads the few bytes left
    (the chunked terminator) so its connection goes back to the pool.

    The openai SDK stops reading at [DONE] and closes the response: httpx then drops the connection,
    and the next request pays a new connection (with a real cloud, a TLS handshake). Closed before
    [DONE] (a cancel, the speech budget) it is dropped as before: that is what stops the upstream.
    The drain is bounded: a server that sends nothing more is cut off after DRAIN_TIMEOUT."""

    MARK = b"data: [DONE]"

    def __init__(self, inner: Any, response: Any):
        self._inner, self._response = inner, response
        self._tail, self.done = b"", False
        self._chunks = self._read()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks     # one iteration, which close() can carry on to the end

    def _read(self) -> Iterator[bytes]:
        for chunk in self._inner:
            if not self.done:
                self._tail = (self._tail + chunk)[-64:]
                self.done = self.MARK in self._tail
            yield chunk

    def close(self) -> None:
        if self.done:
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            token = _WATCHDOG.guard(sock, DRAIN_TIMEOUT) if sock is not None else None
            try:
                for _ in self._chunks:
                    pass
            except Exception:   # noqa: BLE001 - cut off or reset: the connection is dropped, as before
                pass
            finally:
                _WATCHDOG.release(token)
        self._inner.close()


class _Watchdog:
    """One thread that shuts down the sockets whose drain outlived its deadline (a timer thread per
    drain cost more than the drain itself: drains almost always end within microseconds)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[object, tuple[float, socket.socket]] = {}
        self._thread: threading.Thread | None = None

    def guard(self, sock: socket.socket, seconds: float) -> object:
        token = object()
        with self._cond:
            self._due[token] = (time.monotonic() + seconds, sock)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="drain-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token

    def release(self, token: object | None) -> None:
        if token is not None:
            with self._cond:
                self._due.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                late = [token for token, (due, _) in self._due.items() if due <= now]
                socks = [self._due.pop(token)[1] for token in late]
                if not socks:
                    soonest = min((due for due, _ in self._due.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                    continue
            for sock in socks:
                _shutdown(sock)


_WATCHDOG = _Watchdog()


def _reuse_after_done(response: Any) -> None:
    """httpx response hook: event streams get a `_ReusableStream` body."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        response.stream = _ReusableStream(response.stream, response)


def abortable_client(httpx_module: Any, timeout: float) -> Any:
    """An `httpx_module.Client` (httpx or httpx2) whose calls `abort_scope` can interrupt, and whose
    connections stay pooled after event streams that ended with [DONE] (`_ReusableStream`).

    The wrapping reaches into the transport's connection pool; if a future httpx moves it, the client
    still works and a warning says that cancel then waits for the next chunk."""
    import importlib

    core = importlib.import_module("httpcore" if httpx_module.__name__ == "httpx" else "httpcore2")
    client = httpx_module.Client(
        timeout=httpx_module.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        limits=httpx_module.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=32,
                                  keepalive_expiry=KEEPALIVE_SECONDS),
        follow_redirects=True, event_hooks={"response": [_reuse_after_done]})
    transports = [client._transport, *client._mounts.values()]   # the mounts serve env proxies
    for transport in filter(None, transports):     # a mount of None: no proxy for that pattern
        pool = getattr(transport, "_pool", None)
        if pool is None or not hasattr(pool, "_network_backend"):
            log.warning("cannot make %s requests abortable: cancel waits for the next chunk",
                        httpx_module.__name__)
            continue
        pool._network_backend = _Backend(pool._network_backend, core)
    return client


def async_client(httpx_module: Any, timeout: float) -> Any:
    """An `httpx_module.AsyncClient` with the same timeouts and pool as `abortable_client`. On the event
    loop a cancel needs no socket tricks: cancelling the task interrupts the read at once."""
    return httpx_module.AsyncClient(
        timeout=httpx_module.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        limits=httpx_module.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=32,
                                  keepalive_expiry=KEEPALIVE_SECONDS),
        follow_redirects=True)


def aiohttp_session(timeout: float, url: str) -> Any:
    """An aiohttp session with the same timeouts, pool size and keep-alive as `async_client`, for the
    OpenAI-compatible kind on the API's event loop (the hot path of a router in front of vLLM).

    Why aiohttp there: its C HTTP parser and thin response object cost ~0.55 ms of CPU for a streamed
    16-token reply on loopback where httpx2 cost ~1.35 ms, most of what the router added per request.
    It trusts the TLS certificates httpx2 (so the openai SDK) trusts: SSL_CERT_FILE / SSL_CERT_DIR, else
    the system's store. It honours HTTP(S)_PROXY / NO_PROXY for `url` (the one host the session serves),
    looked up once here, where aiohttp's trust_env would do it in a thread per request."""
    import aiohttp
    import httpcore2
    from aiohttp.helpers import get_env_proxy_for_url
    from yarl import URL

    try:
        proxy, proxy_auth = get_env_proxy_for_url(URL(url))
    except LookupError:     # no proxy for this URL
        proxy, proxy_auth = None, None
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0,
                                     keepalive_timeout=KEEPALIVE_SECONDS, ssl=httpcore2.default_ssl_context())
    return aiohttp.ClientSession(connector=connector, proxy=proxy, proxy_auth=proxy_auth,
                                 timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout,
                                                               sock_connect=min(timeout, CONNECT_TIMEOUT)))
