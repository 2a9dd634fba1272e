"""Security guarantees of the HTTP API and the config file, each pinned by a test that can fail.

- the API key gate: only `Authorization: Bearer <exact key>` opens a route (but /health);
- secrets (the server's key, every provider's key) never reach an HTTP error body or a log line;
- a provider key written into the YAML file is refused with a message that says why.
"""

from __future__ import annotations

import logging

import pytest
import requests

from configs import ProviderConfig, load_settings
from llm.errors import ConfigError, UpstreamError
from tests.api_helpers import serve_router
from tests.fake_servers import FakeOpenAIServer
from tests.fakes import ScriptedProvider

SERVER_KEY = "Srv-Key-4d9TqZ-secret"            # mixed case, so a case-folding compare is caught
PROVIDER_KEY = "sk-leaky-provider-8c2e71"       # the failing provider's own key (it scrubs it itself)
OTHER_KEY = "sk-chatgpt-other-3fa90b"           # another provider's key (chatgpt preset: OPENAI_API_KEY)
SECRETS = (SERVER_KEY, PROVIDER_KEY, OTHER_KEY)
BEARER = {"Authorization": f"Bearer {SERVER_KEY}"}
ROUTES = [("post", "/", {"prompt": "hi"}),
          ("post", "/v1/chat/completions", {"model": "direct", "messages": [{"role": "user", "content": "hi"}]}),
          ("get", "/v1/models", None)]


@pytest.fixture(scope="module")
def locked():
    """A server with an API key and the built-in providers ("direct" echoes the prompt)."""
    server = serve_router(api_key=SERVER_KEY)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def leaky():
    """A fresh locked server (so no failure cooldown carries over) with providers whose errors quote
    secrets: "echo401" gets a 401 that echoes its key, "leaky500" a 500 body quoting every secret,
    and "midway" fails mid-stream with every secret in its error."""
    with FakeOpenAIServer(fail_status=401) as echo, FakeOpenAIServer(fail_status=500) as crash:
        crash.fail_body = crash.error_body(500, "upstream crashed; " + " ".join(SECRETS))
        configs = [ProviderConfig(name, "openai", "m", base_url=fake.base_url, api_key_env=("LEAKY_KEY",))
                   for name, fake in (("echo401", echo), ("leaky500", crash))]
        midway = ScriptedProvider("midway", ["第一句。", "第二句。", "第三句。"], fail_after=2,
                                  error=UpstreamError("dropped: " + " ".join(SECRETS)))
        server = serve_router(configs, [midway], api_key=SERVER_KEY,
                              env={"LEAKY_KEY": PROVIDER_KEY, "OPENAI_API_KEY": OTHER_KEY})
        try:
            yield server
        finally:
            server.stop()


def call(server, method: str, path: str, body: dict | None, headers: dict) -> requests.Response:
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=10)


# ---- 1. the API key gate -----------------------------------------------------------------------

BAD_HEADERS = {
    "no header": {},
    "empty bearer token": {"Authorization": "Bearer "},
    "bearer, no space": {"Authorization": "Bearer"},
    "prefix of the key": {"Authorization": f"Bearer {SERVER_KEY[:-1]}"},
    "key plus extra": {"Authorization": f"Bearer {SERVER_KEY}x"},
    "key, other case": {"Authorization": f"Bearer {SERVER_KEY.upper()}"},
    "basic scheme": {"Authorization": f"Basic {SERVER_KEY}"},
    "key alone, no scheme": {"Authorization": SERVER_KEY},
    "x-api-key header": {"X-API-Key": SERVER_KEY},
    "bearer in another header": {"X-Authorization": f"Bearer {SERVER_KEY}"},
}


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[p for _, p, _ in ROUTES])
@pytest.mark.parametrize("headers", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_anything_but_the_exact_bearer_key_is_refused(locked, method, path, body, headers):
    """Only `Authorization: Bearer <the exact key>` opens a route: near misses never do."""
    reply = call(locked, method, path, body, headers)
    assert reply.status_code == 401, reply.text
    assert reply.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("method,path,body", ROUTES, ids=[p for _, p, _ in ROUTES])
def test_the_exact_key_opens_every_route(locked, method, path, body):
    """The right key works on every route (the gate is not simply closed)."""
    reply = call(locked, method, path, body, BEARER)
    assert reply.status_code == 200, reply.text


def test_health_needs_no_key(locked):
    """Liveness probes and load balancers reach /health without the key."""
    reply = requests.get(f"{locked.url}/health", timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


# ---- 2. secrets never leak into error bodies or logs ------------------------------------------

def _ask(provider: str, stream: bool) -> list[tuple[str, dict]]:
    """The same failing call on the seed route and on /v1."""
    return [("/", {"prompt": "hi", "provider": provider, "stream": stream}),
            ("/v1/chat/completions", {"model": provider, "stream": stream,
                                      "messages": [{"role": "user", "content": "hi"}]})]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("provider", ["echo401", "leaky500", "midway"])
def test_no_secret_reaches_error_bodies_or_logs(leaky, caplog, provider, stream):
    """Whatever an upstream says, the HTTP error body and the "llm.api" log hide every key:
    the server's own, the failing provider's, and any other configured provider's."""
    caplog.set_level(logging.DEBUG, logger="llm")
    texts = []
    for path, body in _ask(provider, stream):
        reply = call(leaky, "post", path, body, BEARER)
        streamed = stream and provider == "midway"      # the error comes after the 200 status line
        assert reply.status_code == (200 if streamed else 502), reply.text
        assert "***" in reply.text or provider == "echo401", reply.text  # the error did get there
        texts.append(reply.text)
    api_lines = [r.getMessage() for r in caplog.records if r.name == "llm.api"]
    assert any("***" in line for line in api_lines) or provider == "echo401"
    for text in texts + api_lines:
        for secret in SECRETS:
            assert secret not in text


def test_the_server_key_is_masked_even_when_the_caller_sends_it(locked, caplog):
    """An error that quotes the request (here an unknown provider name) never repeats the server key."""
    caplog.set_level(logging.DEBUG, logger="llm")
    seed = call(locked, "post", "/", {"prompt": "hi", "provider": SERVER_KEY}, BEARER)
    v1 = call(locked, "post", "/v1/chat/completions",
              {"model": SERVER_KEY, "messages": [{"role": "user", "content": "hi"}]}, BEARER)
    for reply in (seed, v1):
        assert reply.status_code == 404 and "***" in reply.text, reply.text
        assert SERVER_KEY not in reply.text
    assert SERVER_KEY not in caplog.text


def test_no_secret_reaches_any_llm_log(leaky, caplog):
    """Every "llm" log line (the router's and the retry policy's warnings too) hides the server's and
    other providers' keys."""
    caplog.set_level(logging.DEBUG, logger="llm")
    assert call(leaky, "post", "/", {"prompt": "hi", "provider": "leaky500"}, BEARER).status_code == 502
    assert SERVER_KEY not in caplog.text and OTHER_KEY not in caplog.text


# ---- 3. keys never live in the config file ----------------------------------------------------

@pytest.mark.parametrize("name", ["mine", "chatgpt"])     # a new provider, and a preset overridden
def test_a_key_in_the_config_file_is_refused_and_not_echoed(tmp_path, name):
    """`api_key:` in the YAML is an error that says why (and never quotes the key back)."""
    path = tmp_path / "configs.yaml"
    path.write_text(f"providers:\n  {name}:\n    kind: openai\n    model: m\n    api_key: sk-file-secret-91ab\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    message = str(caught.value)
    assert "keys never live in the file" in message and f"providers.{name}.api_key" in message
    assert "sk-file-secret-91ab" not in message
