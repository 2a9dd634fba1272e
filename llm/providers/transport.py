"""The async HTTP clients of the cloud kinds: one pool size, one set of timeouts, proxies and certificates.

On the event loop a cancel needs no socket tricks: cancelling the task interrupts the read at once."""

from __future__ import annotations

from typing import Any

import httpx2

CONNECT_TIMEOUT = 10.0      # seconds; a dead host must not hold a request for the read timeout
DRAIN_TIMEOUT = 0.25        # seconds to read what follows an event stream's [DONE] before dropping it
MAX_CONNECTIONS = 256       # per client: every stream holds one
KEEPALIVE_SECONDS = 30      # an idle pooled connection is closed after this


def async_client(timeout: float) -> httpx2.AsyncClient:
    """An httpx2 client (google-genai's): `timeout` seconds per read, a shorter connect, a stream pool."""
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
        limits=httpx2.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=32,
                             keepalive_expiry=KEEPALIVE_SECONDS),
        follow_redirects=True)


def aiohttp_session(timeout: float, url: str) -> Any:
    """An aiohttp session with `async_client`'s timeouts, pool and keep-alive, for the OpenAI-compatible
    kinds: its C HTTP parser and thin response cost ~0.55 ms of CPU for a streamed 16-token reply on
    loopback where httpx2 cost ~1.35 ms, most of what the router added per request. It trusts the
    certificates httpx2 trusts (SSL_CERT_FILE / SSL_CERT_DIR, else the system's store) and honours
    HTTP(S)_PROXY / NO_PROXY for `url` (its one host), looked up once here, where aiohttp's trust_env
    would do it in a thread per request."""
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
