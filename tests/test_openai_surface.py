"""/v1 as real clients use it: the openai SDK and LangChain's ChatOpenAI, through every OpenAI field,
against fake upstreams that record what they received (no network, no keys, no weights).

The chain is client -> this API on 127.0.0.1 -> a provider SDK -> a loopback fake of OpenAI, Gemini or
ZhipuAI. Each test checks both ends: what the client got back and what the upstream was sent.
"""

from __future__ import annotations

import json

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from configs import ProviderConfig
from tests.api_helpers import assert_openai_error, serve_router
from tests.fake_servers import FakeGeminiServer, FakeOpenAIServer, FakeZhipuAIServer, tool_calls

REPLY = "北京今天晴，气温二十度。"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = ("get_weather", '{"city": "北京"}')


class Fakes:
    """One fake per backend kind; `script` sets what each answers next."""

    def __init__(self):
        self.openai, self.gemini, self.zhipu = FakeOpenAIServer(), FakeGeminiServer(), FakeZhipuAIServer()

    def all(self):
        return self.openai, self.gemini, self.zhipu

    def script(self, *replies) -> None:
        for fake in self.all():
            fake._replies = list(replies)
            fake.requests.clear()


@pytest.fixture(scope="module")
def fakes():
    fakes = Fakes()
    for fake in fakes.all():
        fake.start()
    yield fakes
    for fake in fakes.all():
        fake.stop()


@pytest.fixture(scope="module")
def served(fakes):
    configs = [
        ProviderConfig("up", "openai", "up-model", base_url=fakes.openai.base_url, aliases=("gpt-4o-mini",)),
        ProviderConfig("gem", "gemini", "gem-model", base_url=fakes.gemini.base_url, api_key_env=("GEM_KEY",)),
        ProviderConfig("zp", "zhipuai", "zp-model", base_url=fakes.zhipu.base_url, api_key_env=("ZP_KEY",)),
        ProviderConfig("nousage", "openai", "up-model", base_url=fakes.openai.base_url, stream_usage=False),
    ]
    server = serve_router(configs, env={"GEM_KEY": "g-key", "ZP_KEY": "z.key"})
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def plain_reply(fakes):
    fakes.script(REPLY)


def sent(fake) -> dict:
    """The last request body the upstream received."""
    return fake.requests[-1]


# ---- fields: passed on as sent, mapped, or refused by name --------------------------------------

OPENAI_FIELDS = {
    "stop": ["。"], "seed": 7, "frequency_penalty": 0.5, "presence_penalty": -0.5, "logit_bias": {"50256": -100},
    "response_format": {"type": "json_object"}, "logprobs": True, "top_logprobs": 2, "store": False,
    "metadata": {"app": "avatar"}, "user": "u-1", "parallel_tool_calls": False, "tools": [WEATHER],
    "tool_choice": "auto",
}


def test_an_openai_upstream_gets_every_field_as_sent(sdk, fakes):
    sdk.chat.completions.create(model="up", messages=[{"role": "user", "content": "天气？"}], **OPENAI_FIELDS)
    body = sent(fakes.openai)
    for name, value in OPENAI_FIELDS.items():
        assert body[name] == value, name


@pytest.mark.parametrize("field,value,upstream", [
    ("stop", ["。"], lambda b: b["generationConfig"]["stopSequences"] == ["。"]),
    ("seed", 42, lambda b: b["generationConfig"]["seed"] == 42),
    ("frequency_penalty", 0.5, lambda b: b["generationConfig"]["frequencyPenalty"] == 0.5),
    ("presence_penalty", 0.25, lambda b: b["generationConfig"]["presencePenalty"] == 0.25),
    ("response_format", {"type": "json_object"},
     lambda b: b["generationConfig"]["responseMimeType"] == "application/json"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
     lambda b: b["generationConfig"]["responseJsonSchema"] == {"type": "object"}),
    ("tools", [WEATHER], lambda b: b["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
     and b["toolConfig"]["functionCallingConfig"]["mode"] == "AUTO"),
])
def test_gemini_gets_the_fields_in_its_own_terms(sdk, fakes, field, value, upstream):
    sdk.chat.completions.create(model="gem", messages=[{"role": "user", "content": "天气？"}], **{field: value})
    assert upstream(sent(fakes.gemini)), sent(fakes.gemini)


def test_a_named_tool_choice_forces_that_function_on_gemini(sdk, fakes):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    sdk.chat.completions.create(model="gem", messages=[{"role": "user", "content": "天气？"}], tools=[WEATHER],
                                tool_choice=choice)
    config = sent(fakes.gemini)["toolConfig"]["functionCallingConfig"]
    assert config == {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}


def test_zhipuai_gets_stop_seed_tools_and_json_mode(sdk, fakes):
    sdk.chat.completions.create(model="zp", messages=[{"role": "user", "content": "天气？"}], stop="。", seed=3,
                                tools=[WEATHER], response_format={"type": "json_object"})
    body = sent(fakes.zhipu)
    assert body["stop"] == ["。"] and body["seed"] == 3 and body["tools"] == [WEATHER]
    assert body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("model,field,value", [
    ("zp", "frequency_penalty", 0.5),
    ("zp", "logit_bias", {"1": 5}),
    ("zp", "tool_choice", "required"),
    ("zp", "response_format", {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}}),
    ("gem", "logit_bias", {"1": 5}),
    ("gem", "logprobs", True),
    ("gem", "parallel_tool_calls", False),
    ("direct", "stop", ["。"]),
    ("direct", "tools", [WEATHER]),
])
def test_a_field_the_provider_cannot_honour_is_a_400_naming_both(sdk, fakes, model, field, value):
    extra = {"tools": [WEATHER]} if field in ("tool_choice", "parallel_tool_calls") else {}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                    **extra, **{field: value})
    error = caught.value.body
    assert error["param"] == field and field in error["message"] and model in error["message"]
    assert "up" in error["message"]     # the fix names a provider that can
    assert not fakes.gemini.requests and not fakes.zhipu.requests   # refused before any upstream call


def test_neutral_fields_never_refuse(sdk):
    """Fields that do not change the answer (or equal OpenAI's defaults) are fine for every provider."""
    reply = sdk.chat.completions.create(model="direct", messages=[{"role": "user", "content": "原样"}], n=1,
                                        store=True, metadata={"a": "b"}, user="u", logprobs=False,
                                        parallel_tool_calls=True, response_format={"type": "text"})
    assert reply.choices[0].message.content == "原样"


@pytest.mark.parametrize("body,words", [
    ({"n": 2}, "one choice"),
    ({"promt": "typo"}, "unknown field"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]}, "not in tools"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "image_url"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    ({"messages": [{"role": "user", "content": None}]}, "needs content"),
    ({"response_format": {"type": "json_schema"}}, "json_schema is required"),
])
def test_bad_openai_requests_are_400_with_the_reason(served, body, words):
    import requests
    payload = {"model": "up", "messages": [{"role": "user", "content": "hi"}], **body}
    error = assert_openai_error(requests.post(f"{served.url}/v1/chat/completions", json=payload, timeout=10), 400)
    assert words in error["message"], error


# ---- tool calls --------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["up", "gem", "zp"])
def test_tool_calls_come_back_plain(sdk, fakes, model):
    fakes.script(tool_calls(*CALL))
    reply = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "北京天气？"}],
                                        tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "北京"}
    assert call.id


@pytest.mark.parametrize("model", ["up", "gem", "zp"])
def test_tool_calls_come_back_streamed(sdk, fakes, model):
    fakes.script(tool_calls(*CALL, "get_time", "{}"))
    stream = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "天气和时间？"}],
                                         tools=[WEATHER], stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(delta.index, {"name": "", "arguments": "", "id": None})
            call["id"] = call["id"] or delta.id
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "北京"} and all(c["id"] for c in calls.values())


@pytest.mark.parametrize("model", ["up", "gem", "zp"])
def test_tool_results_in_history_reach_the_upstream(sdk, fakes, model):
    messages = [{"role": "user", "content": "北京天气？"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                                     "arguments": '{"city": "北京"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "晴，20度"}]
    reply = sdk.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == REPLY    # a program's request: not cut to a speech budget
    body = sent({"up": fakes.openai, "gem": fakes.gemini, "zp": fakes.zhipu}[model])
    if model == "gem":
        call, result = body["contents"][1]["parts"][0], body["contents"][2]["parts"][0]
        assert call["functionCall"] == {"id": "call_1", "name": "get_weather", "args": {"city": "北京"}}
        assert result["functionResponse"]["name"] == "get_weather"
        assert result["functionResponse"]["response"] == {"result": "晴，20度"}
    else:
        assert body["messages"][1]["tool_calls"][0]["id"] == "call_1"
        assert body["messages"][2] == {"role": "tool", "content": "晴，20度", "tool_call_id": "call_1"}


def test_a_provider_without_tools_refuses_tool_history(sdk):
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}]
    with pytest.raises(openai.BadRequestError, match="tool calls"):
        sdk.chat.completions.create(model="direct", messages=messages)


# ---- usage and finish_reason -------------------------------------------------------------------

@pytest.mark.parametrize("model", ["up", "gem", "zp"])
def test_usage_is_the_upstreams_when_it_sends_one(sdk, model):
    reply = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "天气？"}],
                                        extra_body={"style": "none"})
    # the fakes count 8 prompt tokens and a token per character
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (8, len(REPLY))
    assert reply.usage.total_tokens == 8 + len(REPLY)


def test_usage_is_counted_when_the_upstream_sends_none(sdk, fakes):
    reply = sdk.chat.completions.create(model="nousage", messages=[{"role": "user", "content": "天气？"}],
                                        extra_body={"style": "none"}, stream=True,
                                        stream_options={"include_usage": True})
    chunks = list(reply)
    assert "stream_options" not in sent(fakes.openai)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == len(REPLY)    # one per CJK character
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_no_usage_chunk_unless_asked(sdk):
    chunks = list(sdk.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}],
                                              stream=True, extra_body={"style": "none"}))
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["up", "gem", "zp"])
@pytest.mark.parametrize("stream", [False, True])
def test_max_tokens_ending_the_reply_is_finish_reason_length(sdk, model, stream):
    reply = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "天气？"}],
                                        max_tokens=4, stream=stream, extra_body={"style": "none"})
    if stream:
        chunks = list(reply)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = chunks[-1].choices[0].finish_reason
    else:
        text, finish = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert (text, finish) == (REPLY[:4], "length")


def test_the_speech_budget_ending_the_reply_is_finish_reason_length(sdk, fakes):
    fakes.script("第一句话很短。" * 10)
    reply = sdk.chat.completions.create(model="up", messages=[{"role": "user", "content": "说很多话"}],
                                        extra_body={"max_seconds": 2})
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == "第一句话很短。"
    whole = sdk.chat.completions.create(model="up", messages=[{"role": "user", "content": "说很多话"}],
                                        extra_body={"style": "none"})
    assert whole.choices[0].finish_reason == "stop"


def test_an_alias_reaches_its_provider(sdk, fakes):
    reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"style": "none"})
    assert reply.choices[0].message.content == REPLY and reply.model == "up"
    assert sent(fakes.openai)["model"] == "up-model"


# ---- LangChain's ChatOpenAI --------------------------------------------------------------------

@pytest.fixture
def chat(served):
    return ChatOpenAI(base_url=f"{served.url}/v1", api_key="unused", model="up", max_retries=0, timeout=20,
                      extra_body={"style": "none"})


def test_langchain_invoke_reports_token_usage(chat):
    message = chat.invoke("天气？")
    assert message.content == REPLY
    assert message.usage_metadata["output_tokens"] == len(REPLY)
    assert message.response_metadata["finish_reason"] == "stop"


def test_langchain_streams_with_usage(served):
    chat = ChatOpenAI(base_url=f"{served.url}/v1", api_key="unused", model="up", max_retries=0, timeout=20,
                      extra_body={"style": "none"}, stream_usage=True)
    chunks = list(chat.stream("天气？"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.content == REPLY and whole.usage_metadata["total_tokens"] == 8 + len(REPLY)


def test_langchain_bind_tools_round_trip(chat, fakes):
    fakes.script(tool_calls(*CALL), REPLY)
    tooled = chat.bind_tools([WEATHER])
    first = tooled.invoke([HumanMessage("北京天气？")])
    (call,) = first.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "北京"}
    answer = tooled.invoke([HumanMessage("北京天气？"), first, ToolMessage("晴，20度", tool_call_id=call["id"])])
    assert answer.content == REPLY
    assert sent(fakes.openai)["messages"][-1] == {"role": "tool", "content": "晴，20度", "tool_call_id": call["id"]}


def test_langchain_structured_output(chat, fakes):
    class Weather(BaseModel):
        city: str
        sky: str

    fakes.script('{"city": "北京", "sky": "晴"}')
    result = chat.with_structured_output(Weather, method="json_schema").invoke("北京天气？")
    assert result == Weather(city="北京", sky="晴")
    assert sent(fakes.openai)["response_format"]["type"] == "json_schema"


def test_aliases_are_listed_and_fetched(sdk):
    listed = {m.id: m for m in sdk.models.list()}
    assert listed["gpt-4o-mini"].alias_of == "up" and "up" in listed
    assert sdk.models.retrieve("gpt-4o-mini").alias_of == "up"


def test_direct_reply_takes_sampling_controls_it_cannot_be_changed_by(sdk):
    reply = sdk.chat.completions.create(model="direct", messages=[{"role": "user", "content": "原样读出"}],
                                        seed=1, frequency_penalty=1.0, presence_penalty=0.5)
    assert reply.choices[0].message.content == "原样读出"


# ---- the hot path ------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["up", "gem"])
def test_an_async_client_serves_on_the_event_loop_over_one_connection(sdk, fakes, model):
    """No thread per request (the openai kind and google-genai's aio have async clients) and one
    upstream connection reused across plain and streamed requests."""
    import threading

    fake = fakes.openai if model == "up" else fakes.gemini
    before = fake.connections
    seen: set[str] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(t.name for t in threading.enumerate())
            stop.wait(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(3):
            sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                        extra_body={"style": "none"})
            list(sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                             stream=True, extra_body={"style": "none"}))
    finally:
        stop.set()
        watcher.join()
    assert f"llm-{model}" not in seen
    assert fake.connections - before <= 1


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_asked_of_an_openai_upstream_come_back(sdk, stream):
    """Passed on as sent, so relayed as received: a request for logprobs is for a program (not cut to
    a speech budget), and its log probabilities match the text."""
    reply = sdk.chat.completions.create(model="up", messages=[{"role": "user", "content": "hi"}], logprobs=True,
                                        top_logprobs=0, stream=stream)
    if stream:
        chunks = [c for c in reply if c.choices]
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        tokens = [t.token for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    else:
        text = reply.choices[0].message.content
        tokens = [t.token for t in reply.choices[0].logprobs.content]
    assert text == REPLY and "".join(tokens) == REPLY
