"""The HTTP API through real HTTP: uvicorn on a free loopback port, requests and the openai SDK."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from configs import ProviderConfig
from llm import api, speech
from llm.errors import UpstreamError
from tests.api_helpers import assert_error, assert_openai_error, serve_router, sse_events
from tests.fake_servers import FakeOpenAIServer
from tests.fakes import ScriptedProvider

ROOT = Path(__file__).resolve().parents[1]
STORY = "第一句话。第二句话！Third one here? Last bit"
SERVER_KEY = "test-server-key-7f3a9c"
PROVIDER_KEY = "sk-provider-secret-5b8e1d"


@pytest.fixture(scope="module")
def fake_openai():
    with FakeOpenAIServer([STORY], chunk_delay=0.01) as fake:
        yield fake


@pytest.fixture(scope="module")
def served(fake_openai):
    failing = ScriptedProvider("halfway", ["第一句。", "第二句。", "第三句。"], fail_after=2,
                               error=UpstreamError("the backend dropped the stream"))
    down = ScriptedProvider("down", error=UpstreamError("backend unreachable", fix="start the backend"))
    slow = ScriptedProvider("slow", ["一句话。"] * 200, delay=0.02)
    story = ProviderConfig("story", "openai", "fake-model", base_url=fake_openai.base_url)
    server = serve_router([story], [failing, down, slow])
    server.slow = slow
    yield server
    server.stop()


# ---- the seed API --------------------------------------------------------------------------

def test_seed_client_style_request_gets_the_echo(served):
    reply = requests.post(served.url, json={"prompt": "你好"}, timeout=10)
    body = reply.json()
    assert body["response"] == "你好"
    assert body["status"] == 200 and body["provider"] == "direct"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", body["time"])
    assert set(body["timings"]) == {"ttft_ms", "first_sentence_ms", "total_ms"}
    assert re.fullmatch(r"[0-9a-f]{12}", reply.headers["X-Request-ID"])


@pytest.mark.parametrize("history", [[["早上好", "早上好呀"]],
                                     [{"role": "user", "content": "早上好"},
                                      {"role": "assistant", "content": "早上好呀"}]])
def test_history_comes_back_with_this_turn_appended(served, history):
    body = requests.post(served.url, json={"prompt": "再见", "history": history}, timeout=10).json()
    assert body["history"] == [["早上好", "早上好呀"], ["再见", "再见"]]


def test_sampling_params_in_range_are_accepted(served):
    body = {"prompt": "hi", "max_length": 16, "top_p": 1, "temperature": 0, "style": "none", "system": "s"}
    assert requests.post(served.url, json=body, timeout=10).json()["response"] == "hi"


def test_default_style_keeps_a_cloud_answer_short(served):
    body = requests.post(served.url, json={"prompt": "hi", "provider": "story", "max_seconds": 2}, timeout=10).json()
    assert body["provider"] == "story" and body["response"] == "第一句话。第二句话！"   # 1.6 s; 3.6 s with the next
    assert speech.spoken_seconds(body["response"]) <= 2


def test_stream_sends_each_sentence_as_soon_as_it_is_complete(served):
    body = {"prompt": "tell me", "provider": "story", "style": "none", "stream": True}
    with requests.post(served.url, json=body, stream=True, timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = sse_events(reply)
    sentences = [data["sentence"] for _, data in events if "sentence" in data]
    assert sentences == ["第一句话。", "第二句话！", "Third one here?", "Last bit"]
    done_at, done = events[-1]
    assert done["done"] is True and done["response"] == STORY and done["provider"] == "story"
    assert done["history"] == [["tell me", STORY]]
    # the first sentence left long before the reply finished (~10 ms per character upstream)
    assert events[0][0] < done_at - 0.15
    assert done["timings"]["first_sentence_ms"] < done["timings"]["total_ms"] - 150


def test_error_mid_stream_is_an_error_event_then_the_end(served):
    body = {"prompt": "go", "provider": "halfway", "style": "none", "stream": True}
    with requests.post(served.url, json=body, stream=True, timeout=10) as reply:
        events = [data for _, data in sse_events(reply)]
    assert events[0] == {"sentence": "第一句。", "speech": "第一句。"}
    assert events[-1] == {"error": {"type": "upstream_error", "message": "the backend dropped the stream"}}
    assert not any("done" in data for data in events)


@pytest.mark.parametrize("stream", [False, True])
def test_failure_before_any_text_is_a_real_http_status(served, stream):
    reply = requests.post(served.url, json={"prompt": "go", "provider": "down", "stream": stream}, timeout=10)
    error = assert_error(reply, 502, "upstream_error")
    assert "start the backend" in error["message"]     # the fix travels with the error


def test_provider_without_key_is_503_naming_the_env_var(served):
    error = assert_error(requests.post(served.url, json={"prompt": "hi", "provider": "chatgpt"}, timeout=10),
                         503)
    assert "OPENAI_API_KEY" in error["message"]


def test_client_disconnect_stops_the_generation(served):
    slow, before = served.slow, served.slow.yielded
    slow.closed.clear()
    body = {"prompt": "go", "provider": "slow", "style": "none", "stream": True}
    with requests.post(served.url, json=body, stream=True, timeout=10) as reply:
        next(reply.iter_lines())        # the first sentence arrived; now hang up
    assert slow.closed.wait(5)
    assert slow.yielded - before < 50, "the provider kept generating after the client left"


def test_a_non_streaming_client_that_hangs_up_stops_the_generation_too(served):
    slow, before = served.slow, served.slow.yielded
    slow.closed.clear()
    with pytest.raises(requests.ReadTimeout):
        requests.post(served.url, json={"prompt": "go", "provider": "slow", "style": "none"}, timeout=0.3)
    assert slow.closed.wait(5)
    assert slow.yielded - before < 50, "the provider kept generating after the client left"


# ---- bad input: a clear 4xx in the error shape, never a 500 ----------------------------------

JSON = {"Content-Type": "application/json"}
BAD_INPUTS = [
    ("wrong type for max_length", {"prompt": "hi", "max_length": "100"}, 422),
    ("fractional max_length", {"prompt": "hi", "max_length": 1.5}, 422),
    ("bool for max_length", {"prompt": "hi", "max_length": True}, 422),
    ("max_length 0", {"prompt": "hi", "max_length": 0}, 422),
    ("bool for prompt", {"prompt": True}, 422),
    ("number for prompt", {"prompt": 5}, 422),
    ("missing prompt", {"history": []}, 422),
    ("empty prompt", {"prompt": ""}, 422),
    ("blank prompt", {"prompt": "  \n "}, 422),
    ("top_p 0", {"prompt": "hi", "top_p": 0}, 422),
    ("top_p above 1", {"prompt": "hi", "top_p": 1.5}, 422),
    ("temperature 2.5", {"prompt": "hi", "temperature": 2.5}, 422),
    ("negative temperature", {"prompt": "hi", "temperature": -0.1}, 422),
    ("string for stream", {"prompt": "hi", "stream": "yes"}, 422),
    ("unknown style", {"prompt": "hi", "style": "long"}, 422),
    ("bad history shape", {"prompt": "hi", "history": "earlier"}, 422),
    ("bad history role", {"prompt": "hi", "history": [{"role": "bot", "content": "x"}]}, 422),
    ("unknown field", {"prompt": "hi", "promt": "typo"}, 422),
    ("array body", ["hi"], 422),
    ("NaN", b'{"prompt": "hi", "temperature": NaN}', 422),
    ("Infinity", b'{"prompt": "hi", "top_p": Infinity}', 422),
    ("-Infinity", b'{"prompt": "hi", "temperature": -Infinity}', 422),
    ("1e999", b'{"prompt": "hi", "temperature": 1e999}', 422),
    ("lone surrogate", b'{"prompt": "\\ud800"}', 400),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe"}', 400),
    ("malformed JSON", b'{"prompt": "hi"', 400),
    ("empty body", b"", 400),
    ("deep nesting", b"[" * 100_000, 400),
    ("unknown provider", {"prompt": "hi", "provider": "nope"}, 404),
]


@pytest.mark.parametrize("body,status", [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(served, body, status):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    assert_error(requests.post(served.url, data=data, headers=JSON, timeout=10), status)


def test_wrong_content_type_is_415(served):
    reply = requests.post(served.url, data="prompt=hi", headers={"Content-Type": "text/plain"}, timeout=10)
    assert "application/json" in assert_error(reply, 415, "unsupported_media_type")["message"]


def test_oversized_body_is_413_with_or_without_a_length(served):
    big = json.dumps({"prompt": "x" * 1_100_000}).encode()
    assert_error(requests.post(served.url, data=big, headers=JSON, timeout=10), 413, "payload_too_large")
    chunked = (big[i:i + 65536] for i in range(0, len(big), 65536))     # no Content-Length
    assert_error(requests.post(served.url, data=chunked, headers=JSON, timeout=10), 413, "payload_too_large")


def test_unknown_routes_and_methods_use_the_error_shape(served):
    assert_error(requests.post(f"{served.url}/nope", json={}, timeout=10), 404, "not_found")
    assert_error(requests.get(served.url, timeout=10), 405, "method_not_allowed")
    assert_openai_error(requests.get(f"{served.url}/v1/nope", timeout=10), 404)


def test_server_keeps_serving_after_bad_input(served):
    for case in BAD_INPUTS:
        data = case[1] if isinstance(case[1], bytes) else json.dumps(case[1]).encode()
        assert requests.post(served.url, data=data, headers=JSON, timeout=10).status_code < 500
    assert requests.post(served.url, json={"prompt": "still here"}, timeout=10).json()["response"] == "still here"


# ---- the OpenAI-compatible API ---------------------------------------------------------------

def test_openai_sdk_plain_completion(sdk):
    reply = sdk.chat.completions.create(model="default", messages=[{"role": "user", "content": "你好"}])
    assert reply.choices[0].message.content == "你好" and reply.model == "direct"
    story = sdk.chat.completions.create(model="story", extra_body={"style": "none"},
                                        messages=[{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "tell me"}])
    assert story.choices[0].message.content == STORY and story.choices[0].finish_reason == "stop"


def test_openai_sdk_streaming(sdk, fake_openai):
    stream = sdk.chat.completions.create(model="story", stream=True, extra_body={"style": "none"},
                                         messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == STORY
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert fake_openai.requests[-1]["messages"][-1]["content"] == "hi"


def test_openai_sdk_sees_typed_errors(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):         # OpenAI's own status for an invalid request
        sdk.chat.completions.create(model="direct", temperature=2.5, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last message"):
        sdk.chat.completions.create(model="direct", messages=[{"role": "assistant", "content": "hi"}])
    with pytest.raises(openai.APIError, match="dropped the stream"):
        list(sdk.chat.completions.create(model="halfway", stream=True, extra_body={"style": "none"},
                                         messages=[{"role": "user", "content": "hi"}]))


def test_openai_errors_have_the_openai_shape(served):
    url = f"{served.url}/v1/chat/completions"
    error = assert_openai_error(requests.post(url, json={"model": "direct", "messages": [], "foo": 1},
                                              timeout=10), 400)
    assert error["param"] == "messages"
    assert_openai_error(requests.post(url, data=b'{"messages": NaN}', headers=JSON, timeout=10), 400)
    assert_openai_error(requests.post(url, data=b"{", headers=JSON, timeout=10), 400)


def test_models_lists_providers_with_readiness(sdk):
    models = {m.id: m for m in sdk.models.list()}
    assert {"direct", "story", "chatgpt"} <= set(models)
    assert models["direct"].ready is True and models["chatgpt"].ready is False


def test_health_and_docs(served):
    health = requests.get(f"{served.url}/health", timeout=10).json()
    assert health["status"] == "ok"
    assert health["providers"]["direct"]["ready"] is True
    assert "OPENAI_API_KEY" in health["providers"]["chatgpt"]["reason"]
    assert requests.get(f"{served.url}/docs", timeout=10).status_code == 200
    schema = requests.get(f"{served.url}/openapi.json", timeout=10).json()
    assert "prompt" in schema["components"]["schemas"]["SeedRequest"]["properties"]


# ---- concurrency -----------------------------------------------------------------------------

def test_concurrent_cloud_requests_overlap():
    with FakeOpenAIServer(["0123456789"], chunk_delay=0.03) as fake:    # ~300 ms per reply
        server = serve_router([ProviderConfig("cloud", "openai", "m", base_url=fake.base_url)],
                              short_answer=False)
        try:
            def ask(i: int) -> str:
                body = {"prompt": f"q{i}", "provider": "cloud"}
                return requests.post(server.url, json=body, timeout=30).json()["response"]

            ask(0)      # warm up the SDK client
            start = time.perf_counter()
            ask(1)
            one = time.perf_counter() - start
            start = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(ask, range(16)))
            sixteen = time.perf_counter() - start
        finally:
            server.stop()
    assert replies == ["0123456789"] * 16
    assert one >= 0.25 and sixteen < 5 * one, (one, sixteen)


# ---- security --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def locked():
    with FakeOpenAIServer(fail_status=401) as fake:      # it echoes the key it was sent
        cfg = ProviderConfig("leaky", "openai", "m", base_url=fake.base_url, api_key_env=("LEAKY_KEY",))
        server = serve_router([cfg], env={"LEAKY_KEY": PROVIDER_KEY}, api_key=SERVER_KEY)
        yield server
        server.stop()


def test_with_a_key_every_route_but_health_needs_it(locked):
    bearer = {"Authorization": f"Bearer {SERVER_KEY}"}
    reply = requests.post(locked.url, json={"prompt": "hi"}, timeout=10)
    assert_error(reply, 401, "unauthorized")
    assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert_error(requests.post(locked.url, json={"prompt": "hi"}, headers={"Authorization": "Bearer wrong"},
                               timeout=10), 401)
    assert_error(requests.post(locked.url, json={"prompt": "hi"}, headers={"Authorization": "Bearer \u00e9"},
                               timeout=10), 401)
    assert_openai_error(requests.get(f"{locked.url}/v1/models", timeout=10), 401)
    assert requests.get(f"{locked.url}/docs", timeout=10).status_code == 401
    assert requests.post(locked.url, json={"prompt": "hi"}, headers=bearer, timeout=10).json()["response"] == "hi"
    assert requests.get(f"{locked.url}/health", timeout=10).json()["status"] == "ok"


def test_openai_sdk_with_the_server_key(locked):
    good = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=SERVER_KEY, max_retries=0, timeout=10)
    assert good.chat.completions.create(model="direct", messages=[{"role": "user", "content": "hi"}]
                                        ).choices[0].message.content == "hi"
    bad = openai.OpenAI(base_url=f"{locked.url}/v1", api_key="wrong", max_retries=0, timeout=10)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_no_key_ever_appears_in_responses_or_logs(locked, caplog):
    caplog.set_level(logging.DEBUG)
    bearer = {"Authorization": f"Bearer {SERVER_KEY}"}
    texts = []
    for body in ({"prompt": "hi", "provider": "leaky"}, {"prompt": "hi", "provider": "leaky", "stream": True},
                 {"prompt": f"my key is {SERVER_KEY}", "provider": "nope"}):
        reply = requests.post(locked.url, json=body, headers=bearer, timeout=10)
        assert reply.status_code in (404, 502)
        texts += [reply.text, str(reply.headers)]
    sdk = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=SERVER_KEY, max_retries=0, timeout=10)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="leaky", messages=[{"role": "user", "content": "hi"}])
    texts += [caught.value.response.text, requests.get(f"{locked.url}/health", timeout=10).text]
    for text in texts + [caplog.text]:
        assert SERVER_KEY not in text and PROVIDER_KEY not in text


def test_without_a_key_auth_is_off(served):
    assert requests.post(served.url, json={"prompt": "hi"}, headers={"Authorization": "Bearer anything"},
                         timeout=10).json()["response"] == "hi"


def test_log_lines_carry_the_request_id_and_a_clipped_prompt(served, caplog):
    caplog.set_level(logging.INFO, logger="llm.api")
    prompt = "abcdefghij" * 20
    rid = requests.post(served.url, json={"prompt": prompt}, timeout=10).headers["X-Request-ID"]
    lines = [r.getMessage() for r in caplog.records if rid in r.getMessage()]
    assert any("abcdefghij" * 4 in line for line in lines)
    assert prompt[:51] not in caplog.text


def test_no_cors_headers_for_foreign_origins(served):
    reply = requests.post(served.url, json={"prompt": "hi"}, headers={"Origin": "https://evil.example"},
                          timeout=10)
    assert not any(h.lower().startswith("access-control-") for h in reply.headers)


@pytest.mark.parametrize("host,key,insecure,refused", [
    ("0.0.0.0", None, False, True), ("::", None, False, True), ("192.168.1.5", None, False, True),
    ("example.com", None, False, True), ("127.0.0.1", None, False, False), ("::1", None, False, False),
    ("localhost", None, False, False), ("0.0.0.0", "k", False, False), ("0.0.0.0", None, True, False),
])
def test_check_bind_security(host, key, insecure, refused):
    problem = api.check_bind_security(host, key, insecure)
    assert (problem is not None) == refused
    if refused:
        assert "LLM_API_KEY" in problem and "--insecure" in problem


def test_a_busy_port_is_a_clear_error(served):
    app = api.create_app(served.router)
    with pytest.raises(OSError, match="cannot serve the API on 127.0.0.1"):
        api.start_in_thread(app, "127.0.0.1", served.handle.port)


# ---- the CLI ---------------------------------------------------------------------------------

def _cli_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("LLM_API_KEY", "LLM_CONFIG")}


def test_cli_refuses_a_public_host_without_a_key():
    done = subprocess.run([sys.executable, "webui.py", "--api-only", "--host", "0.0.0.0"], cwd=ROOT,
                          env=_cli_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "LLM_API_KEY" in done.stderr


def test_cli_api_only_serves_health():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "webui.py", "--api-only", "--api-port", str(port)], cwd=ROOT,
                            env=_cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=30).json()
                break
            except requests.ConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.1)
        assert health["status"] == "ok" and health["providers"]["direct"]["ready"] is True
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_listening_socket_lets_asyncio_turn_off_nagle(served):
    # asyncio sets TCP_NODELAY on accepted connections only if the listening socket's proto is TCP
    from llm.api.server import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_one_model_can_be_fetched_and_an_unknown_one_names_the_valid_ones(sdk, served):
    model = sdk.models.retrieve("direct")
    assert model.id == "direct" and model.object == "model" and model.model_extra["ready"] is True
    with pytest.raises(openai.NotFoundError, match="use one of: direct"):
        sdk.models.retrieve("gpt-9")
    assert_openai_error(requests.get(f"{served.url}/v1/models/gpt-9", timeout=10), 404)
