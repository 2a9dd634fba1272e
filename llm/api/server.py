"""Serving the API: binding the port, in the foreground or a thread; not beyond this machine without a key."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("llm.api")


def check_bind_security(host: str, api_key: str | None, insecure: bool) -> str | None:
    """Why binding `host` is unsafe (a non-loopback address with no API key), or None when it is fine."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False    # a hostname: it may resolve anywhere
    if api_key or insecure or loopback:
        return None
    return (f"refusing to serve the API on {host} without an API key: anyone who can reach this machine "
            "could use the models. Set LLM_API_KEY (or pass --api-key), or pass --insecure to allow it.")


def socket_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port`, ready to listen (OSError when the port is taken): the page checks
    its ports with it too."""
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so; without it every back-to-back request stalled ~40 ms on a delayed ACK.
    sock = socket.socket(socket_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _bind(host: str, port: int) -> socket.socket:
    """`bind`, so a busy port fails here with a clear error (uvicorn would exit)."""
    try:
        return bind(host, port)
    except OSError as e:
        raise OSError(e.errno, f"cannot serve the API on {host}:{port}: {e.strerror} "
                               "(is another server using the port? choose another with --api-port)") from e


def _server(app: FastAPI, host: str, port: int) -> tuple[uvicorn.Server, socket.socket]:
    sock = _bind(host, port)
    config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level="warning",
                            timeout_graceful_shutdown=3)
    return uvicorn.Server(config), sock


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C)."""
    server, sock = _server(app, host, port)
    log.info("API on http://%s:%d (docs at /docs)", host, sock.getsockname()[1])
    server.run(sockets=[sock])


class ServerThread:
    """A server running in a daemon thread; `port` is the bound port (useful with port 0)."""

    def __init__(self, server: uvicorn.Server, sock: socket.socket):
        self.server, self.port = server, sock.getsockname()[1]
        self.thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llm-api",
                                       daemon=True)

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def start_in_thread(app: FastAPI, host: str, port: int, timeout: float = 10) -> ServerThread:
    """Start serving in the background; returns once it accepts connections (OSError if it cannot)."""
    handle = ServerThread(*_server(app, host, port))
    handle.thread.start()
    deadline = time.monotonic() + timeout
    while not handle.server.started:
        if not handle.thread.is_alive() or time.monotonic() > deadline:
            handle.stop(1)
            raise RuntimeError(f"the API server on {host}:{port} did not start within {timeout:.0f} s")
        time.sleep(0.01)
    log.info("API on http://%s:%d (docs at /docs)", host, handle.port)
    return handle
