"""The cloud providers through their real SDKs, against loopback servers speaking the real wire formats."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, replace

import google.genai
import openai
import pytest
import zhipuai

from configs import PRESETS, Settings, load_settings
from llm.errors import (
    CancelledError,
    NotReadyError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from llm.providers import provider_class
from llm.router import Router
from llm.types import CancelToken, GenerationParams, Message
from tests.fake_servers import FAKES, FakeGeminiServer, FakeOpenAIServer, FakeZhipuAIServer, refused_url

LONG_REPLY = "压力大的时候可以深呼吸，适当运动，和朋友聊天，保证充足的睡眠，这些都是很有帮助的方法。" * 2


@dataclass(frozen=True)
class Backend:
    kind: str
    preset: str
    env_var: str
    key: str
    prefix: str      # path part of the fake's base_url

    def sent_key(self, request: dict) -> str:
        headers = request["_headers"]
        if self.kind == "gemini":
            return headers["x-goog-api-key"]
        return headers["authorization"].removeprefix("Bearer ")


BACKENDS = {
    "openai": Backend("openai", "chatgpt", "OPENAI_API_KEY", "sk-test-4f1c9a0b7e", "/v1"),
    "gemini": Backend("gemini", "gemini", "GEMINI_API_KEY", "AIzaTestKey-77e1d0", ""),
    # ZhipuAI keys are "id.secret"
    "zhipuai": Backend("zhipuai", "glm", "ZHIPUAI_API_KEY", "5f0c1d2e3a.SecretPart9x", "/api/paas/v4"),
}
KINDS = list(BACKENDS)


def config_for(kind: str, base_url: str, **changes):
    """The kind's preset, pointed at `base_url`, with a short timeout so failures are quick."""
    return replace(PRESETS[BACKENDS[kind].preset], base_url=base_url, **{"timeout": 5.0, **changes})


def provider_for(kind: str, base_url: str, env: dict | None = None, **changes):
    b = BACKENDS[kind]
    env = {b.env_var: b.key} if env is None else env
    return provider_class(kind)(config_for(kind, base_url, **changes), env)


def router_for(kind: str, fake, **style) -> Router:
    cfg = config_for(kind, fake.base_url)
    settings = Settings(default=cfg.name, providers={cfg.name: cfg})
    settings = replace(settings, style=replace(settings.style, **style))
    b = BACKENDS[kind]
    return Router(settings, env={b.env_var: b.key})


def drain(gen, n: int | None = None) -> list[str]:
    """The first `n` (or all) text deltas of a provider stream ("" is a sign of life, not text)."""
    out = []
    for item in gen:
        if not item or not isinstance(item, str):    # "" and StreamEvents (finish, usage) are not text
            continue
        out.append(item)
        if n is not None and len(out) == n:
            break
    return out


def sent_system(kind: str, request: dict) -> str:
    if kind == "gemini":
        return request["systemInstruction"]["parts"][0]["text"]
    first = request["messages"][0]
    assert first["role"] == "system"
    return first["content"]


def sent_sampling(kind: str, request: dict) -> dict:
    """temperature, top_p and the token limit, under our names, as the backend received them."""
    if kind == "gemini":
        gc = request["generationConfig"]
        return {"temperature": gc.get("temperature"), "top_p": gc.get("topP"),
                "max_new_tokens": gc.get("maxOutputTokens")}
    return {"temperature": request.get("temperature"), "top_p": request.get("top_p"),
            "max_new_tokens": request.get("max_tokens")}


# ---- the fakes speak the real formats ----------------------------------------------------------

def test_the_fakes_answer_the_sdks_without_streaming():
    with FakeOpenAIServer(["甲"]) as o, FakeGeminiServer(["乙"]) as g, FakeZhipuAIServer(["丙"]) as z:
        oc = openai.OpenAI(api_key="k", base_url=o.base_url, max_retries=0)
        gc = google.genai.Client(api_key="k", http_options={"base_url": g.base_url})
        zc = zhipuai.ZhipuAI(api_key="a.b", base_url=z.base_url, max_retries=0)
        ask = [{"role": "user", "content": "hi"}]
        assert oc.chat.completions.create(model="m", messages=ask).choices[0].message.content == "甲"
        assert gc.models.generate_content(model="gemini-2.5-flash", contents="hi").text == "乙"
        assert zc.chat.completions.create(model="glm-4-flash", messages=ask).choices[0].message.content == "丙"
        assert g.requests[0]["_path"].endswith("/models/gemini-2.5-flash:generateContent")


# ---- text in, text out --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_streamed_and_joined_replies_arrive_intact(kind):
    reply = "你好！我是数字人，很高兴认识你。"
    with FAKES[kind]([reply]) as fake:
        router = router_for(kind, fake, short_answer=False)
        chunks = list(router.stream("你好"))
        joined = router.chat("你好")
    assert "".join(c.text for c in chunks) == reply
    assert len(chunks) > 1, "the reply must arrive as a stream, not in one piece"
    assert {c.provider for c in chunks} == {router.settings.default}
    assert joined.text == reply and joined.provider == router.settings.default


@pytest.mark.parametrize("kind", KINDS)
def test_the_backend_receives_model_history_style_sampling_and_key(kind):
    b = BACKENDS[kind]
    with FAKES[kind]() as fake:
        router = router_for(kind, fake)
        router.chat("介绍一下你自己", history=[["你好", "你好呀"]],
                    params={"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64})
    [request] = fake.requests
    assert b.sent_key(request) == b.key
    assert "请用少于25个字回答以下问题" in sent_system(kind, request)
    assert sent_sampling(kind, request) == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64}
    if kind == "gemini":
        assert request["_path"].endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
        turns = [(c["role"], c["parts"][0]["text"]) for c in request["contents"]]
        assert turns == [("user", "你好"), ("model", "你好呀"), ("user", "介绍一下你自己")]
    else:
        assert request["model"] == config_for(kind, "").model and request["stream"] is True
        turns = [(m["role"], m["content"]) for m in request["messages"][1:]]
        assert turns == [("user", "你好"), ("assistant", "你好呀"), ("user", "介绍一下你自己")]


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_zero_is_greedy(kind):
    with FAKES[kind]() as fake:
        router_for(kind, fake).chat("你好", params={"temperature": 0})
    request = fake.requests[0]
    if kind == "zhipuai":   # ZhipuAI rejects 0: greedy is do_sample=false
        assert request["do_sample"] is False and 0 < request["temperature"] <= 0.01
    else:
        assert sent_sampling(kind, request)["temperature"] == 0


def test_openai_sends_vllm_sampling_extensions_only_to_custom_servers():
    params = GenerationParams(top_k=20, repetition_penalty=1.15, temperature=1.0)
    with FakeOpenAIServer() as fake:
        drain(provider_for("openai", fake.base_url).stream([Message("user", "hi")], params, CancelToken()))
    assert fake.requests[0]["top_k"] == 20 and fake.requests[0]["repetition_penalty"] == 1.15
    cloud = provider_class("openai")(PRESETS["chatgpt"], {"OPENAI_API_KEY": "k"})
    body = cloud.request_body([Message("user", "hi")], params)
    assert "top_k" not in body and "repetition_penalty" not in body and body["temperature"] == 1.0


# ---- keys ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_key_names_the_env_var_and_the_fix(kind):
    b = BACKENDS[kind]
    provider = provider_class(kind)(PRESETS[b.preset], env={})
    status = provider.status()
    assert not status.ready
    assert b.env_var in status.reason and f"export {b.env_var}=" in status.fix
    router = Router(Settings(default=b.preset, providers={b.preset: PRESETS[b.preset]}), env={})
    with pytest.raises(NotReadyError, match=b.env_var):
        router.chat("你好")


def test_an_openai_compatible_server_needs_no_key():
    with FakeOpenAIServer(["好的"]) as fake:
        provider = provider_for("openai", fake.base_url, env={})
        assert provider.status().ready
        assert "".join(drain(provider.stream([Message("user", "hi")], GenerationParams(), CancelToken()))) == "好的"
    assert fake.requests[0]["_headers"]["authorization"].startswith("Bearer ")


@pytest.mark.parametrize("kind", ["gemini", "zhipuai"])
def test_gemini_and_zhipuai_need_a_key_even_with_a_base_url(kind):
    with FAKES[kind]() as fake:
        status = provider_for(kind, fake.base_url, env={}).status()
    assert not status.ready and BACKENDS[kind].env_var in status.reason


# ---- errors -------------------------------------------------------------------------------------

ERRORS = [   # fake status, our error class, our edge status, words the message must hold
    (401, UpstreamError, 502, "key was rejected"),
    (403, UpstreamError, 502, "key was rejected"),
    (429, RateLimitError, 429, "rate limited"),
    (400, UpstreamError, 502, "Invalid request"),
    (404, UpstreamError, 502, "not found"),
    (500, UpstreamError, 502, "500"),
    (503, UpstreamError, 502, "503"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("status", "cls", "edge_status", "words"), ERRORS)
def test_upstream_errors_map_to_typed_errors_keeping_the_status(kind, status, cls, edge_status, words):
    b = BACKENDS[kind]
    with FAKES[kind](fail_status=status) as fake:
        provider = provider_for(kind, fake.base_url)
        gen = provider.stream([Message("user", "hi")], GenerationParams(), CancelToken())
        assert not fake.requests, "nothing may happen before the router iterates"
        with pytest.raises(UpstreamError) as info:
            next(gen)
    assert len(fake.requests) == 1, "the SDK must not retry behind the router's back"
    err = info.value
    assert type(err) is cls and err.status == edge_status and err.upstream_status == status
    assert words in err.message
    assert err.__cause__ is not None, "raise ... from the SDK error"
    assert b.key not in str(err) and b.key not in err.fix     # the 401 body echoes the key
    if status in (401, 403):
        assert b.env_var in str(err)
    if status == 404:
        assert provider.config.model in err.message


@pytest.mark.parametrize("kind", KINDS)
def test_a_backend_message_repeating_the_key_is_scrubbed(kind):
    b = BACKENDS[kind]
    body = FAKES[kind]().error_body(400, f"bad parameter near {b.key}")
    with FAKES[kind](fail_status=400, fail_body=body) as fake:
        with pytest.raises(UpstreamError) as info:
            drain(provider_for(kind, fake.base_url).stream([Message("user", "hi")], GenerationParams(),
                                                           CancelToken()))
    assert "bad parameter near" in info.value.message and b.key not in str(info.value)


def test_gemini_reports_an_invalid_key_given_as_400():
    body = {"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                      "status": "INVALID_ARGUMENT",
                      "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}
    with FakeGeminiServer(fail_status=400, fail_body=body) as fake:
        with pytest.raises(UpstreamError, match="key was rejected.*GEMINI_API_KEY") as info:
            drain(provider_for("gemini", fake.base_url).stream([Message("user", "hi")], GenerationParams(),
                                                               CancelToken()))
    assert info.value.upstream_status == 400


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_backend_times_out_as_504(kind):
    with FAKES[kind](chunk_delay=2.0) as fake:
        provider = provider_for(kind, fake.base_url, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(UpstreamTimeoutError) as info:
            drain(provider.stream([Message("user", "hi")], GenerationParams(), CancelToken()))
    assert info.value.status == 504 and info.value.__cause__ is not None
    assert time.monotonic() - start < 1.5, "the configured timeout must apply, without SDK retries"


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_backend_names_its_url(kind):
    url = refused_url(BACKENDS[kind].prefix)
    with pytest.raises(UpstreamError, match="cannot reach") as info:
        drain(provider_for(kind, url).stream([Message("user", "hi")], GenerationParams(), CancelToken()))
    assert url in info.value.message and info.value.upstream_status is None
    assert info.value.__cause__ is not None


# ---- stopping early -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_closing_the_generator_closes_the_http_stream(kind):
    with FAKES[kind]([LONG_REPLY], chunk_delay=0.01) as fake:
        gen = provider_for(kind, fake.base_url).stream([Message("user", "hi")], GenerationParams(),
                                                       CancelToken())
        assert len(drain(gen, 3)) == 3
        gen.close()
        time.sleep(0.25)    # long enough for ~25 more chunks had the stream stayed open
        sent = fake.chunks_sent
    assert sent < 12, f"the server kept streaming after the client closed ({sent} of {len(LONG_REPLY)})"


@pytest.mark.parametrize("kind", KINDS)
def test_the_speech_budget_stops_the_upstream_stream(kind):
    with FAKES[kind]([LONG_REPLY], chunk_delay=0.01) as fake:
        reply = router_for(kind, fake).chat("压力大怎么办", max_chars=20)
        time.sleep(0.3)
        sent = fake.chunks_sent
    assert 0 < len(reply.text) <= 20
    assert sent < 40, f"{sent} of {len(LONG_REPLY)} chunks sent for a 20-character answer"


@pytest.mark.parametrize("kind", KINDS)
def test_the_cancel_token_stops_a_stream(kind):
    cancel = CancelToken()
    with FAKES[kind]([LONG_REPLY], chunk_delay=0.01) as fake:
        gen = provider_for(kind, fake.base_url).stream([Message("user", "hi")], GenerationParams(), cancel)
        drain(gen, 2)
        cancel.cancel()
        with pytest.raises(CancelledError):
            drain(gen)
        time.sleep(0.2)
        sent = fake.chunks_sent
    assert sent < 10, f"the server kept streaming after the cancel ({sent} chunks)"


def test_cancelling_a_routed_stream_raises_cancelled():
    cancel = CancelToken()
    with FakeOpenAIServer([LONG_REPLY], chunk_delay=0.01) as fake:
        stream = router_for("openai", fake, short_answer=False).stream("你好", cancel=cancel)
        next(stream)
        cancel.cancel()
        with pytest.raises(CancelledError):
            drain(stream)


# ---- fallback and lifecycle ---------------------------------------------------------------------

def test_a_failing_provider_falls_back_and_the_chunks_name_who_answered(tmp_path):
    with FakeOpenAIServer(fail_status=500) as broken, FakeGeminiServer(["我来回答。"]) as backup:
        path = tmp_path / "configs.yaml"
        path.write_text(f"""
default: primary
providers:
  primary: {{kind: openai, model: gpt-4.1-mini, base_url: "{broken.base_url}", fallback: [backup]}}
  backup: {{kind: gemini, model: gemini-2.5-flash, base_url: "{backup.base_url}", api_key_env: GEMINI_API_KEY}}
""", encoding="utf-8")
        router = Router(load_settings(path, env={}), env={"GEMINI_API_KEY": "g-key"})
        chunks = list(router.stream("你好"))
    assert broken.requests, "the primary must have been tried first"
    assert "".join(c.text for c in chunks) == "我来回答。"
    assert {c.provider for c in chunks} == {"backup"}


def test_an_unreachable_provider_falls_back():
    with FakeZhipuAIServer(["备用回答。"]) as backup:
        primary = replace(config_for("openai", refused_url("/v1")), name="primary", fallback=("backup",))
        second = replace(config_for("zhipuai", backup.base_url), name="backup")
        router = Router(Settings(default="primary", providers={"primary": primary, "backup": second}),
                        env={"ZHIPUAI_API_KEY": "a.b"})
        reply = router.chat("你好")
    assert reply.text == "备用回答。" and reply.provider == "backup"


@pytest.mark.parametrize("kind", KINDS)
def test_close_releases_the_client_and_the_provider_still_works_after(kind):
    with FAKES[kind](["好"]) as fake:
        provider = provider_for(kind, fake.base_url)
        ask = ([Message("user", "hi")], GenerationParams(), CancelToken())
        assert drain(provider.stream(*ask)) == ["好"]
        provider.close()
        assert drain(provider.stream(*ask)) == ["好"]
        provider.close()
    assert len(fake.requests) == 2


def test_a_server_that_wants_a_key_nobody_configured_says_where_to_name_it():
    with FakeOpenAIServer(fail_status=401) as fake:
        provider = provider_for("openai", fake.base_url, env={}, api_key_env=())
        with pytest.raises(UpstreamError, match="wants an API key") as info:
            drain(provider.stream([Message("user", "hi")], GenerationParams(), CancelToken()))
    assert info.value.upstream_status == 401 and "api_key_env" in info.value.fix


# ---- connection reuse ----------------------------------------------------------------------------

async def adrain(provider, n: int | None = None) -> list[str]:
    """`drain` of the provider's async stream (on the running loop, whose client it keeps), closed after."""
    out = []
    async with aclosing(provider.astream([Message("user", "hi")], GenerationParams(), CancelToken())) as gen:
        async for item in gen:
            if item and isinstance(item, str):
                out.append(item)
                if n is not None and len(out) == n:
                    break
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_back_to_back_streams_reuse_one_upstream_connection(kind):
    """The openai SDK stops reading at [DONE] and closes the response; without reading the rest of the
    body first, httpx dropped the connection and every request paid a new one (with a cloud: TLS too).
    A connection belongs to its event loop: the streams share one, as the API's requests do."""
    with FAKES[kind](["好的。"]) as fake:
        provider = provider_for(kind, fake.base_url)

        async def five() -> None:
            for _ in range(5):
                assert "".join(await adrain(provider)) == "好的。"
            await provider.aclose_loop()
        asyncio.run(five())
        assert fake.connections == 1


def test_a_stream_left_early_is_still_cut_so_the_upstream_stops():
    with FakeOpenAIServer([LONG_REPLY], chunk_delay=0.01) as fake:
        provider = provider_for("openai", fake.base_url)

        async def cut_then_again() -> None:
            assert len(await adrain(provider, 3)) == 3
            await asyncio.sleep(0.3)
            assert fake.chunks_sent < len(LONG_REPLY) / 2
            await adrain(provider, 1)
            await provider.aclose_loop()
        asyncio.run(cut_then_again())
        assert fake.connections == 2    # the cut connection was not put back in the pool


def test_a_server_that_never_ends_the_body_after_done_costs_at_most_the_drain_bound():
    """Reading past [DONE] (for reuse) must not wait for the read timeout on a server that keeps the body open."""
    with FakeOpenAIServer(["好的。"], faults=["linger"]) as fake:
        provider = provider_for("openai", fake.base_url, timeout=20.0)
        start = time.monotonic()
        assert "".join(drain(provider.stream([Message("user", "hi")], GenerationParams(),
                                             CancelToken()))) == "好的。"
        assert time.monotonic() - start < 5     # not the 20 s read timeout
        provider.close()


def test_an_async_client_belongs_to_its_event_loop():
    """The API's loop and Gradio's each get their own async client: a connection opened on one loop
    cannot be used from another."""
    with FakeOpenAIServer(["好的。"]) as fake:
        router = router_for("openai", fake)

        async def reply() -> str:
            return "".join([c.text async for c in router.astream("你好", style=False)])

        assert asyncio.run(reply()) == asyncio.run(reply()) == "好的。"
        router.close()
