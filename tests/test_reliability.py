"""Reliability against a fault-injecting upstream, through the real SDKs and the real HTTP API.

Each row of issue #7's table: a fault the upstream commits, and what a user of the avatar must see
(an honest error, a quick retry, a fallback, a bounded wait, a closed socket)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from contextlib import ExitStack, contextmanager

import openai
import pytest
import requests

from configs import ProviderConfig
from llm.__main__ import main as llm_cli
from llm.policy import Policy
from llm.providers import provider_class
from tests.api_helpers import assert_error, generation_threads, serve_router, sse_events
from tests.fake_servers import FAKES

WIRES = ("openai", "zhipuai", "gemini")
ENV = {"FAKE_KEY": "sk-fake-key-for-tests"}
REPLY = "你好，我是数字人。今天天气很好。"


def config(name: str, kind: str, fake, **fields) -> ProviderConfig:
    return ProviderConfig(name, kind, "fake-model", base_url=fake.base_url, api_key_env=("FAKE_KEY",), **fields)


@contextmanager
def upstreams(*specs):
    """Fake upstreams, one per (kind, faults) spec, started and stopped together."""
    with ExitStack() as stack:
        yield [stack.enter_context(FAKES[kind]([REPLY], faults=faults)) for kind, faults in specs]


@contextmanager
def served(*configs):
    server = serve_router(list(configs), env=ENV)
    try:
        yield server
    finally:
        server.stop()


def ask(server, provider: str, **body) -> tuple[requests.Response, float]:
    start = time.perf_counter()
    reply = requests.post(server.url, json={"prompt": "你好", "provider": provider, **body}, timeout=60)
    return reply, time.perf_counter() - start


def wait_until(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# ---- no hidden errors ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", WIRES)
@pytest.mark.parametrize("fault", ["html", "empty", "truncate", "drop"])
def test_a_broken_reply_is_an_error_and_the_fallback_answers(kind, fault):
    with upstreams((kind, [fault])) as (fake,), served(
            config("alone", kind, fake, retries=0, cooldown=0),
            config("covered", kind, fake, retries=0, cooldown=0, fallback=("direct",))) as server:
        reply, _ = ask(server, "alone")
        error = assert_error(reply, 502, "upstream_error")
        assert "alone" in error["message"]
        reply, _ = ask(server, "covered")
        assert reply.status_code == 200, reply.text
        assert reply.json()["provider"] == "direct" and reply.json()["response"] == "你好"


@pytest.mark.parametrize("kind", ["openai", "zhipuai"])     # their streams expose the HTTP response
def test_an_html_page_says_what_came_back(kind):
    with upstreams((kind, ["html"])) as (fake,), served(config("web", kind, fake)) as server:
        error = assert_error(ask(server, "web")[0], 502)
    assert "text/html" in error["message"] and "base_url" in error["message"]


def test_a_stream_cut_after_text_was_sent_ends_with_an_error_event():
    with upstreams(("openai", ["truncate"])) as (fake,), served(
            config("cut", "openai", fake, fallback=("direct",))) as server:
        reply = requests.post(f"{server.url}/v1/chat/completions", stream=True, timeout=30, json={
            "model": "cut", "stream": True, "style": "none", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.status_code == 200
        events = [data for _, data in sse_events(reply)]
    texts = [e["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    assert "".join(texts) and REPLY.startswith("".join(texts))      # the first half, as it came
    assert events[-1]["error"]["type"] == "upstream_error"          # then the truth, not a "stop"
    assert all(e.get("choices", [{}])[0].get("finish_reason") != "stop" for e in events[:-1])


def test_a_sentence_stream_cut_before_its_first_sentence_still_falls_back():
    # REPLY's first half, "你好，我是数字人", has no sentence end: the client has seen nothing yet
    with upstreams(("openai", ["truncate"])) as (fake,), served(
            config("cut", "openai", fake, retries=0, fallback=("direct",))) as server:
        reply = requests.post(server.url, stream=True, timeout=30,
                              json={"prompt": "你好。", "provider": "cut", "stream": True})
        events = [data for _, data in sse_events(reply)]
    assert [e.get("sentence") for e in events[:-1]] == ["你好。"]
    assert events[-1]["done"] and events[-1]["provider"] == "direct"


# ---- retries ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", WIRES)
def test_two_503s_then_fine_is_answered_after_quick_retries(kind):
    with upstreams((kind, ["status:503", "status:503", "ok"])) as (fake,), served(config("p", kind, fake)) as s:
        reply, took = ask(s, "p")
    assert reply.status_code == 200 and reply.json()["provider"] == "p", reply.text
    assert len(fake.requests) == 3 and took < 3


@pytest.mark.parametrize("kind", WIRES)
def test_a_429_with_retry_after_is_answered_after_that_wait(kind):
    with upstreams((kind, ["status:429:1", "ok"])) as (fake,), served(config("p", kind, fake)) as s:
        reply, took = ask(s, "p")
    assert reply.status_code == 200 and reply.json()["provider"] == "p", reply.text
    assert len(fake.requests) == 2 and 0.95 <= took < 3


@pytest.mark.parametrize("kind", WIRES)
def test_a_long_retry_after_is_passed_on_to_the_client_at_once(kind):
    with upstreams((kind, ["status:429:30"])) as (fake,), served(config("p", kind, fake)) as s:
        reply, took = ask(s, "p")
        v1 = requests.post(f"{s.url}/v1/chat/completions", timeout=30,
                           json={"model": "p", "messages": [{"role": "user", "content": "hi"}]})
    assert_error(reply, 429, "rate_limited")
    assert reply.headers["Retry-After"] == "30" and v1.headers["Retry-After"] == "30"
    assert took < 2 and len(fake.requests) == 2    # no retry: waiting 30 s is the client's call


def test_a_caller_error_is_not_retried():
    with upstreams(("openai", ["status:400"])) as (fake,), served(config("p", "openai", fake)) as s:
        assert_error(ask(s, "p")[0], 502)
    assert len(fake.requests) == 1


# ---- cooldown, deadlines, hedging ----------------------------------------------------------------

@pytest.mark.parametrize("kind", WIRES)
def test_a_hung_provider_costs_one_timeout_then_is_skipped_while_cooling_down(kind):
    with upstreams((kind, ["hang"])) as (fake,), served(
            config("hung", kind, fake, first_token_timeout=0.5, fallback=("direct",))) as server:
        first, took_first = ask(server, "hung")
        assert first.status_code == 200 and first.json()["provider"] == "direct", first.text
        assert 0.5 <= took_first < 2.5
        assert wait_until(lambda: fake.hanging == 0, 2), "the timed-out upstream call was left open"
        second, took_second = ask(server, "hung")
        assert second.json()["provider"] == "direct" and took_second < 0.4
        assert len(fake.requests) == 1          # skipped, not asked again
        health = requests.get(f"{server.url}/health", timeout=10).json()["providers"]["hung"]
        models = requests.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    assert health["ready"] is False and 25 < health["cooldown_s"] <= 30
    assert "cooling down" in health["reason"] and "no reply within 0.5 s" in health["last_error"]
    assert next(m for m in models if m["id"] == "hung")["cooldown_s"] > 0


def test_llm_status_shows_the_running_servers_cooldown(tmp_path, capsys):
    with upstreams(("openai", ["hang"])) as (fake,), served(
            config("hung", "openai", fake, first_token_timeout=0.3, fallback=("direct",))) as server:
        ask(server, "hung")
        path = tmp_path / "configs.yaml"
        path.write_text(f"server: {{api_port: {server.handle.port}}}\n")
        assert llm_cli(["--config", str(path), "status"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("hung"))
    assert "live, from the API" in out and "cooling down" in line and "no reply within 0.3 s" in line


def test_after_the_cooldown_one_probe_decides():
    faults = ["status:500"] * 3 + ["ok"]
    with upstreams(("openai", faults)) as (fake,), served(
            config("flaky", "openai", fake, retries=0, cooldown=0.5, fallback=("direct",))) as server:
        answered = [ask(server, "flaky")[0].json()["provider"] for _ in range(4)]
        assert answered == ["direct"] * 4 and len(fake.requests) == 3    # the 4th was skipped
        time.sleep(0.6)
        probe = ask(server, "flaky")[0].json()
        assert probe["provider"] == "flaky" and probe["response"]
        assert requests.get(f"{server.url}/health", timeout=10).json()["providers"]["flaky"]["ready"]


def test_a_provider_without_settings_gets_live_avatar_deadlines():
    for kind in WIRES:
        provider = provider_class(kind)(ProviderConfig("p", kind, "m", api_key_env=("FAKE_KEY",)), ENV)
        policy = Policy.of(provider)
        assert (policy.retries, policy.first_token_timeout, policy.stall_timeout) == (2, 20, 15)
        assert provider.timeout == 30       # per connect/read, not the SDKs' 600 s
    http = provider_class("openai")(ProviderConfig("p", "openai", "m", base_url="http://127.0.0.1:9"), ENV)

    async def read_timeout() -> float:
        timeout = http.client().timeout.sock_read     # the running loop's aiohttp session
        await http.aclose_loop()
        return timeout
    assert asyncio.run(read_timeout()) == 30


@pytest.mark.parametrize("route", ["seed", "seed-stream", "v1", "v1-stream"])
def test_a_stall_mid_stream_ends_with_504_in_bounded_time(route):
    with upstreams(("openai", ["stall"])) as (fake,), served(config("p", "openai", fake, stall_timeout=0.5)) as s:
        start = time.perf_counter()
        stream = route.endswith("stream")
        if route.startswith("seed"):
            reply = requests.post(s.url, json={"prompt": "你好", "provider": "p", "stream": stream,
                                               "style": "none"}, stream=stream, timeout=30)
        else:
            reply = requests.post(f"{s.url}/v1/chat/completions", stream=stream, timeout=30, json={
                "model": "p", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        if route == "v1-stream":    # text was sent: the stream ends with an error event
            assert reply.status_code == 200
            error = sse_events(reply)[-1][1]["error"]
        else:   # nothing was shown yet (the seed stream shows whole sentences only): a real status
            assert reply.status_code == 504, reply.text
            error = reply.json()["error"]
        assert time.perf_counter() - start < 3
        assert error["type"] == "upstream_timeout" and "stalled" in error["message"]
        assert wait_until(lambda: fake.hanging == 0, 2)


@pytest.mark.parametrize("kind", ["zhipuai", "gemini"])
def test_a_stall_is_a_504_in_bounded_time_on_the_other_wires_too(kind):
    with upstreams((kind, ["stall"])) as (fake,), served(config("p", kind, fake, stall_timeout=0.5)) as s:
        reply, took = ask(s, "p")
        assert wait_until(lambda: fake.hanging == 0, 2)
    assert_error(reply, 504, "upstream_timeout")
    assert took < 3


@pytest.mark.parametrize("kind", WIRES)
def test_a_hedge_races_the_fallback_and_closes_the_loser(kind):
    with upstreams((kind, ["hang"]), ("openai", ["ok"])) as (slow, fast), served(
            config("slow", kind, slow, hedge_after=0.3, fallback=("fast",)),
            config("fast", "openai", fast)) as server:
        reply, took = ask(server, "slow")
        assert reply.status_code == 200 and reply.json()["provider"] == "fast", reply.text
        assert 0.3 <= took < 1.5
        assert wait_until(lambda: slow.hanging == 0, 2), "the losing upstream call was left open"


# ---- cancel reaches the socket -------------------------------------------------------------------

def test_clients_that_hang_up_while_waiting_close_the_upstream_calls():
    with upstreams(("openai", ["hang"])) as (fake,), served(config("hung", "openai", fake)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        body = json.dumps({"prompt": "hi", "provider": "hung"}).encode()
        clients = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            clients.append(sock)
        assert wait_until(lambda: fake.hanging == 40, 10)
        for sock in clients:
            sock.close()
        assert wait_until(lambda: fake.hanging == 0, 3), f"{fake.hanging} upstream calls left open"
        # no generation thread is left waiting for nobody (idle executor threads are a pool, not a leak)
        assert wait_until(lambda: not generation_threads(), 3), generation_threads()


def test_the_openai_sdk_gets_a_stream_error_it_can_raise():
    with upstreams(("openai", ["stall"])) as (fake,), served(config("p", "openai", fake, stall_timeout=0.5)) as s:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=10)
        stream = client.chat.completions.create(model="p", stream=True, extra_body={"style": "none"},
                                                messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.APIError, match="stalled"):
            for _ in stream:
                pass


# ---- honest messages -------------------------------------------------------------------------------

def test_when_all_are_down_every_provider_and_its_error_is_named():
    with upstreams(("openai", ["status:500"]), ("gemini", ["html"])) as (a, b), served(
            config("first", "openai", a, retries=0, fallback=("second", "direct")),
            config("second", "gemini", b), ProviderConfig("direct", "openai", "m", base_url=a.base_url,
                                                          retries=0)) as server:
        error = assert_error(ask(server, "first")[0], 502, "all_providers_failed")
    message = error["message"]
    assert "first: first: the server answered 500" in message
    assert "second: second: the reply stream ended" in message or "second: second:" in message
    assert "direct:" in message


@pytest.mark.parametrize("kind", WIRES)
def test_an_upstream_detail_body_is_shown_in_its_own_words(kind):
    with upstreams((kind, ["detail:400"])) as (fake,), served(config("p", kind, fake)) as server:
        error = assert_error(ask(server, "p")[0], 502)
    assert "upstream says no (400)" in error["message"]
