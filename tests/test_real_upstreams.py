"""The API in front of upstreams nobody here wrote, as real clients see it (issue 17): llama.cpp's server
(tool names repeated in every delta, `"content": null` and `json_schema` refused with a 500 carrying a
traceback, no usage), a small model that answers with an emotion tag alone, and what cools a provider down.

The chain is client (openai SDK, LangChain, plain HTTP) -> this API -> a loopback fake with that behaviour.
"""

from __future__ import annotations

import json
import logging

import openai
import pytest
import requests
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from configs import ProviderConfig
from tests.api_helpers import assert_error, assert_openai_error, serve_router, sse_events
from tests.fake_servers import FakeLlamaCppServer, FakeOpenAIServer, tool_calls

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
FORCED = {"type": "function", "function": {"name": "get_weather"}}
CALL = ("get_weather", '{"city": "北京"}')
ASKED = {"role": "user", "content": "北京天气？"}
CALLED = {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                "function": {"name": "get_weather", "arguments": CALL[1]}}]}
ANSWERED = {"role": "tool", "tool_call_id": "call_1", "content": "晴，二十度"}
LONG_EN = " ".join(["The Great Wall of China is a series of walls and forts built over many centuries."] * 4)


@pytest.fixture(scope="module")
def llama():
    with FakeLlamaCppServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def served(llama):
    server = serve_router([ProviderConfig("llama", "openai", "qwen-0.5b", base_url=llama.base_url)])
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(llama, served):
    llama._replies, llama._faults = [tool_calls(*CALL)], ["ok"]
    llama.requests.clear()
    served.router._breakers.clear()


def provider_for(served, fake, **kw) -> str:
    """A provider of the openai kind in front of `fake`, added to the running server; its name."""
    name = f"up{fake.base_url.rsplit(':', 1)[1].split('/')[0]}"
    served.router.settings.providers[name] = ProviderConfig(name, "openai", "m", base_url=fake.base_url, **kw)
    return name


def upstream_messages(fake) -> list[dict]:
    return fake.requests[-1]["messages"]


# ---- row 1: a tool call's name is not a delta ------------------------------------------------------

def test_a_forced_tool_call_has_its_name_once_plain_and_streamed(sdk, llama):
    reply = sdk.chat.completions.create(model="llama", messages=[ASKED], tools=[WEATHER], tool_choice=FORCED)
    call = reply.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "北京"})
    assert reply.choices[0].finish_reason == "tool_calls"

    deltas = [c.choices[0].delta.tool_calls[0] for c in sdk.chat.completions.create(
        model="llama", messages=[ASKED], tools=[WEATHER], tool_choice=FORCED, stream=True)
        if c.choices and c.choices[0].delta.tool_calls]
    assert [d.function.name for d in deltas if d.function.name] == ["get_weather"]    # on the first delta only
    assert [d.id for d in deltas if d.id] == [deltas[0].id]
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "北京"}


def test_langchain_gets_the_tool_by_its_name_invoked_and_streamed(served):
    chat = ChatOpenAI(base_url=f"{served.url}/v1", api_key="unused", model="llama", max_retries=0)
    bound = chat.bind_tools([WEATHER], tool_choice="get_weather")
    assert [(c["name"], c["args"]) for c in bound.invoke("北京天气？").tool_calls] == [("get_weather", {"city": "北京"})]
    streamed = None
    for chunk in bound.stream("北京天气？"):
        streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("get_weather", {"city": "北京"})]


# ---- row 2: a tool round trip reaches the upstream as the client sent it ----------------------------

@pytest.mark.parametrize("content", ["absent", None, ""])
def test_a_tool_round_trip_passes_the_assistant_message_as_sent(sdk, llama, content):
    llama._replies = ["北京今天晴，二十度。"]
    called = CALLED if content == "absent" else {**CALLED, "content": content}
    reply = sdk.chat.completions.create(model="llama", messages=[ASKED, called, ANSWERED], tools=[WEATHER])
    assert reply.choices[0].message.content == "北京今天晴，二十度。"
    sent = upstream_messages(llama)[-2]
    if content == "":
        assert sent["content"] == ""        # "" stays ""
    else:
        assert "content" not in sent        # absent stays absent; null (the same to OpenAI) goes as absent
    assert sent["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_langchain_tool_round_trip_answers(served, llama):
    llama._replies = ["北京今天晴，二十度。"]
    chat = ChatOpenAI(base_url=f"{served.url}/v1", api_key="unused", model="llama", max_retries=0)
    asked = AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "北京"}, "id": "call_1"}])
    reply = chat.bind_tools([WEATHER]).invoke([HumanMessage("北京天气？"), asked,
                                               ToolMessage("晴，二十度", tool_call_id="call_1")])
    assert reply.content == "北京今天晴，二十度。"


# ---- rows 3, 10: a refused request is the client's 400, and cools nothing down ----------------------

def test_a_json_schema_refused_upstream_is_a_400_naming_the_field_and_the_provider(sdk, llama, served):
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="llama", messages=[ASKED], response_format=schema)
    error = info.value.body
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert "llama" in error["message"] and "'text' or 'json_object'" in error["message"]
    assert 'File "' not in error["message"] and "site-packages" not in error["message"]
    assert len(llama.requests) == 1, "a refusal is not retried"


def test_refused_requests_never_cool_the_provider_down_for_everyone(served, llama):
    llama._replies = ["你好！"]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}}
    for _ in range(4):
        refused = requests.post(f"{served.url}/v1/chat/completions", timeout=20, json={
            "model": "llama", "messages": [ASKED], "response_format": schema})
        assert_openai_error(refused, 400)
    reply = requests.post(served.url, json={"prompt": "你好", "provider": "llama"}, timeout=20)
    assert reply.status_code == 200 and reply.json()["response"] == "你好！"
    assert served.router.status("llama").ready


def test_an_empty_reply_never_cools_the_provider_down(served):
    with FakeOpenAIServer(["[neutral]"]) as fake:
        name = provider_for(served, fake)
        for _ in range(4):
            error = assert_error(requests.post(served.url, timeout=20, json={
                "prompt": "你好", "provider": name, "emotions": True}), 502, "upstream_error")
            assert "empty reply" in error["message"] and "fallback" not in error["message"]
        assert len(fake.requests) == 4, "every request reached the provider: no cooldown"


def test_ill_health_still_cools_a_provider_down_and_the_error_names_no_missing_fallback(served, llama):
    llama._faults = ["status:503"]
    for _ in range(3):
        assert_error(requests.post(served.url, json={"prompt": "你好", "provider": "llama"}, timeout=30), 502)
    cooling = assert_error(requests.post(served.url, json={"prompt": "你好", "provider": "llama"}, timeout=30),
                           503, "cooling_down")
    assert "fallback answers" not in cooling["message"]


# ---- row 4: a tag alone, or a bare tag, is never spoken ---------------------------------------------

def test_a_reply_of_only_an_emotion_tag_goes_to_the_fallback(served):
    with FakeOpenAIServer(["[neutral]"]) as fake:
        name = provider_for(served, fake, fallback=("direct",))
        reply = requests.post(served.url, json={"prompt": "你好", "provider": name, "emotions": True}, timeout=20)
    assert reply.status_code == 200 and reply.json()["provider"] == "direct"


@pytest.mark.parametrize("said, sentences", [
    ("joy 今天天气很好。", [("今天天气很好。", "joy")]),
    ("neutral\nThe wall is long.", [("The wall is long.", "neutral")]),
    ("sad: I am sorry. joy: But it is sunny!", [("I am sorry.", "sad"), ("But it is sunny!", "joy")]),
    ("Joy is a feeling.", [("Joy is a feeling.", "neutral")]),    # a word of the sentence stays
])
def test_a_bare_emotion_tag_is_an_emotion_not_a_word(served, said, sentences):
    with FakeOpenAIServer([said]) as fake:
        reply = requests.post(served.url, timeout=20, json={
            "prompt": "天气", "provider": provider_for(served, fake), "emotions": True, "max_seconds": 30}).json()
    assert [(s["sentence"], s["emotion"]) for s in reply["sentences"]] == sentences


def test_every_sentence_event_has_an_emotion_when_asked_direct_reply_too(served):
    stream = requests.post(served.url, stream=True, timeout=20, json={
        "prompt": "你好。再见。", "provider": "direct", "stream": True, "emotions": True})
    events = [e for _, e in sse_events(stream) if isinstance(e, dict) and "sentence" in e]
    assert [e["emotion"] for e in events] == ["neutral", "neutral"]


# ---- row 5: an upstream's traceback stays in the server log -----------------------------------------

TRACEBACK = ('Traceback (most recent call last):\n  File "/srv/venv/lib/python3.11/site-packages/llama_cpp/server/'
             'app.py", line 376, in create_chat_completion\n    return await run_in_threadpool(llama, **kw)\n'
             'RuntimeError: llama_decode returned -1')


def test_an_upstream_traceback_reaches_the_log_not_the_client(served, caplog):
    with FakeOpenAIServer(fail_status=500, fail_body={"error": {"message": TRACEBACK, "type": "server_error"}}) as fake:
        name = provider_for(served, fake, retries=0)
        with caplog.at_level(logging.WARNING):
            error = assert_error(requests.post(served.url, json={"prompt": "你好", "provider": name}, timeout=20), 502)
    assert "RuntimeError: llama_decode returned -1" in error["message"]
    assert "File " not in error["message"] and "/srv/" not in error["message"] and "Traceback" not in error["message"]
    assert any("/srv/venv" in r.getMessage() for r in caplog.records), "the whole text is logged"


# ---- rows 6, 7: nothing the client did not ask for; usage within the limit --------------------------

@pytest.mark.parametrize("extra", [{"tools": [WEATHER]}, {"response_format": {"type": "json_object"}}, {}])
def test_no_max_tokens_reaches_the_upstream_unless_asked(sdk, llama, extra):
    llama._replies = ["{}"]
    sdk.chat.completions.create(model="llama", messages=[ASKED], **extra)
    assert "max_tokens" not in llama.requests[-1]
    sdk.chat.completions.create(model="llama", messages=[ASKED], max_tokens=40, **extra)
    assert llama.requests[-1]["max_tokens"] == 40


@pytest.mark.parametrize("limit", [30, 120])
@pytest.mark.parametrize("stream", [False, True])
def test_counted_usage_is_never_above_the_limit_that_ended_the_reply(sdk, llama, limit, stream):
    llama._replies = [LONG_EN * 3]
    kw = {"model": "llama", "messages": [{"role": "user", "content": "Tell me about the Great Wall."}],
          "max_tokens": limit, "extra_body": {"style": "none"}}
    if stream:
        chunks = list(sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        usage, finish = chunks[-1].usage, [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        reply = sdk.chat.completions.create(**kw)
        usage, finish = reply.usage, reply.choices[0].finish_reason
    assert finish == "length" and 0 < usage.completion_tokens <= limit
