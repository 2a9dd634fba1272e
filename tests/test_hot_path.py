"""The API's hot path to OpenAI-compatible upstreams (issue #9): aiohttp on the event loop, text deltas
that arrive together relayed together, the environment's proxy settings honoured, and the upstream
connections closed with the server. What it costs is measured by bench/router_overhead.py."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time

import openai
import pytest
import trustme

from configs import ProviderConfig, Settings
from llm.errors import LLMError
from llm.providers.openai_compat import _merge, _plain_delta
from llm.router import Router
from tests.api_helpers import serve_router
from tests.fake_servers import FakeGeminiServer, FakeOpenAIServer, FakeZhipuAIServer

REPLY = "你好，今天天气很好。"
FAKES = {"openai": FakeOpenAIServer, "gemini": FakeGeminiServer, "zhipuai": FakeZhipuAIServer}


def _content_chunks(sdk: openai.OpenAI, model: str = "up") -> list[str]:
    stream = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True,
                                         extra_body={"style": "none"})
    return [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]


@pytest.fixture
def api_over():
    """An API in front of one openai-kind upstream; yields (sdk, fake) for the fake's arguments."""
    started = []

    def start(*args, **kw) -> tuple[openai.OpenAI, FakeOpenAIServer]:
        fake = FakeOpenAIServer(*args, **kw)
        fake.start()
        served = serve_router([ProviderConfig("up", "openai", "m", base_url=fake.base_url)])
        started.append((served, fake))
        return openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=20), fake

    yield start
    for served, fake in started:
        served.stop()
        fake.stop()


def test_text_deltas_that_arrive_in_one_read_are_relayed_as_one_chunk(api_over):
    """A burst (a fast server, or a reader that fell behind) costs one pass through the router, not one
    per token; the text, finish reason and end are as sent."""
    sdk, fake = api_over([REPLY], faults=["burst"])
    pieces = _content_chunks(sdk)
    assert "".join(pieces) == REPLY
    assert len(pieces) <= 2 < len(REPLY)     # one event per character upstream
    reply = sdk.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"style": "none"})
    assert (reply.choices[0].message.content, reply.choices[0].finish_reason) == (REPLY, "stop")


def test_text_deltas_that_arrive_apart_are_relayed_at_once_each(api_over):
    """Merging never holds text back: what arrives alone is passed on alone."""
    sdk, fake = api_over([REPLY], chunk_delay=0.03, chunks=5)
    pieces = _content_chunks(sdk)
    assert "".join(pieces) == REPLY and len(pieces) == 5


def _delta(delta: dict | None = None, **choice) -> dict:
    return {"id": "c", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": "好"} if delta is None else delta,
                         "finish_reason": None, **choice}]}


@pytest.mark.parametrize(("first", "second", "merged"), [
    (_delta({"role": "assistant", "content": ""}), _delta(), True),
    (_delta(), _delta(), True),
    (_delta(), _delta(finish_reason="stop"), False),
    (_delta(), _delta({}, finish_reason="length"), False),
    (_delta(), _delta(logprobs={"content": [{"token": "好", "logprob": -0.1}]}), False),
    (_delta(), _delta({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}), False),
    (_delta(), _delta({"reasoning_content": "想"}), False),
    (_delta(), _delta({"role": "assistant", "content": "好"}), False),
    (_delta(), {**_delta(), "usage": {"prompt_tokens": 1}}, False),
    (_delta(), {**_delta(), "choices": [*_delta()["choices"], {**_delta()["choices"][0], "index": 1}]}, False),
    (_delta(), _delta(index=1), False),
])
def test_only_plain_text_deltas_of_the_one_choice_merge(first, second, merged):
    original = dict(first["choices"][0]["delta"])
    assert _merge(_plain_delta(first), _plain_delta(second)) is merged
    expected = {**original, "content": original["content"] + "好"} if merged else original
    assert first["choices"][0]["delta"] == expected


@pytest.fixture
def no_proxy_env(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _router_to(base_url: str, kind: str = "openai") -> Router:
    cfg = ProviderConfig("up", kind, "m", base_url=base_url, retries=0, api_key_env=("UP_KEY",))
    return Router(Settings(providers={"up": cfg}, default="up"), env={"UP_KEY": "k"})


@pytest.mark.parametrize("on_loop", [True, False], ids=["event loop", "thread"])
def test_upstream_calls_go_through_the_environments_proxy(no_proxy_env, on_loop):
    """HTTP_PROXY is honoured on the event loop (aiohttp) as in threads (httpx): a host only the proxy
    can reach answers through it."""
    with FakeOpenAIServer([REPLY]) as proxy:    # a forward proxy that answers itself
        no_proxy_env.setenv("HTTP_PROXY", proxy.base_url)
        text = _reply(_router_to("http://llm-upstream.test/v1"), on_loop)
    assert text == REPLY
    assert proxy.requests[-1]["_path"] == "http://llm-upstream.test/v1/chat/completions"


def test_no_proxy_keeps_a_host_off_the_proxy(no_proxy_env):
    with FakeOpenAIServer([REPLY]) as proxy, FakeOpenAIServer(["直连。"]) as upstream:
        no_proxy_env.setenv("HTTP_PROXY", proxy.base_url)
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        router = _router_to(upstream.base_url)
        try:
            assert asyncio.run(_text(router)) == "直连。"
        finally:
            router.close()
    assert proxy.requests == [] and len(upstream.requests) == 1


@pytest.mark.parametrize(("kind", "on_loop"), [("openai", True), ("openai", False), ("gemini", True),
                                              ("gemini", False), ("zhipuai", False)])
def test_an_https_upstream_is_trusted_as_the_sdks_trust_it(no_proxy_env, tmp_path, kind, on_loop):
    """A certificate from a company CA: refused with a fix that names SSL_CERT_FILE, then trusted
    through SSL_CERT_FILE, on the event loop (aiohttp; google-genai's aio) as in threads (the SDKs'
    httpx stacks)."""
    ca = trustme.CA()
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_side)
    no_proxy_env.delenv("SSL_CERT_FILE", raising=False)
    no_proxy_env.delenv("SSL_CERT_DIR", raising=False)
    with FAKES[kind]([REPLY], tls=server_side) as fake:
        with pytest.raises(LLMError) as refused:
            _reply(_router_to(fake.base_url, kind), on_loop)
        assert "certificate" in refused.value.message and "SSL_CERT_FILE" in refused.value.fix
        assert not refused.value.transient      # retrying cannot help
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        no_proxy_env.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        assert _reply(_router_to(fake.base_url, kind), on_loop) == REPLY


def _reply(router: Router, on_loop: bool) -> str:
    try:
        if on_loop:
            return asyncio.run(_text(router))
        return "".join(c.text for c in router.stream("hi", style=False))
    finally:
        router.close()


async def _text(router: Router) -> str:
    return "".join([c.text async for c in router.astream("hi", style=False)])


def test_stopping_the_server_closes_its_upstream_connections(caplog):
    """Closed on the server's own loop as it shuts down (the upstream sees them end), and with no
    "Unclosed client session" error at exit."""
    with FakeOpenAIServer([REPLY]) as fake:
        served = serve_router([ProviderConfig("up", "openai", "m", base_url=fake.base_url)])
        sdk = openai.OpenAI(base_url=f"{served.url}/v1", api_key="x", max_retries=0, timeout=20)
        assert "".join(_content_chunks(sdk)) == REPLY
        assert len(fake._connections) == 1
        with caplog.at_level(logging.ERROR):
            served.handle.stop()
            deadline = time.monotonic() + 3
            while fake._connections and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not fake._connections
            del served, sdk     # the router never closed: the server's shutdown alone must do
            gc.collect()
        assert not [r for r in caplog.records if "nclosed" in r.getMessage()]
