"""Helpers for the HTTP API tests: a served router on a free loopback port, and an SSE reader."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, replace

import requests

from configs import PRESETS, KnowledgeConfig, ProviderConfig, SessionsConfig, Settings
from llm import api
from llm.providers.base import Provider
from llm.router import Router


@dataclass
class Served:
    """A running API server and the router behind it."""

    router: Router
    handle: api.ServerThread
    scratch: str | None = None      # a folder of its own (the sessions' store), removed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.handle.port}"

    def stop(self) -> None:
        self.handle.stop()
        self.router.close()
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def serve_router(configs: list[ProviderConfig] = (), providers: list[Provider] = (), *,
                 env: dict | None = None, api_key: str | None = None, max_body_bytes: int = 1_000_000,
                 short_answer: bool = True, default: str = "direct", knowledge: KnowledgeConfig | None = None,
                 sessions: SessionsConfig | None = None, store: str | None = None) -> Served:
    """The cloud presets plus `configs` (built by the router) and `providers` (injected), on 127.0.0.1:0.

    Local presets are left out: their status check imports torch, which would only slow these tests."""
    presets = {name: cfg for name, cfg in PRESETS.items() if cfg.kind != "local"}
    all_configs = {**presets, **{c.name: c for c in configs}, **{p.name: p.config for p in providers}}
    scratch = None if sessions else tempfile.mkdtemp(prefix="llm-test-sessions-")
    settings = Settings(providers=all_configs, default=default, knowledge=knowledge or KnowledgeConfig(),
                        sessions=sessions or SessionsConfig(folder=scratch), store=store)
    settings = replace(settings, style=replace(settings.style, short_answer=short_answer))
    router = Router(settings, env={} if env is None else env, providers={p.name: p for p in providers})
    app = api.create_app(router, api_key=api_key, max_body_bytes=max_body_bytes)
    return Served(router, api.start_in_thread(app, "127.0.0.1", 0), scratch)


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generation_threads() -> list[str]:
    """The router's generation threads still alive (worker threads of blocking providers)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("llm-") and t.name != "llm-api"]


def sse_events(response: requests.Response) -> list[tuple[float, object]]:
    """(seconds since the call, parsed data) for each event of a streamed response."""
    start, events = time.perf_counter(), []
    for line in response.iter_lines(decode_unicode=True):
        if line and line.startswith("data: "):
            data = line[len("data: "):]
            events.append((time.perf_counter() - start, data if data == "[DONE]" else json.loads(data)))
    return events


def assert_error(response: requests.Response, status: int, type_: str | None = None) -> dict:
    """The response is `status` with the seed error shape; returns its `error` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert set(body["error"]) == {"type", "message"} and body["error"]["message"]
    if type_ is not None:
        assert body["error"]["type"] == type_, body
    return body["error"]


def assert_openai_error(response: requests.Response, status: int) -> dict:
    """The response is `status` with OpenAI's error shape; returns its `error` object."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"]
    return error
