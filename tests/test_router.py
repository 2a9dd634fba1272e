"""The router: default provider, speech style, history, fallback, cancel, concurrency, async bridge."""

import asyncio
import threading
import time
from dataclasses import replace

import pytest

from llm.errors import (
    AllProvidersFailedError,
    CancelledError,
    InvalidRequestError,
    NotReadyError,
    UnknownProviderError,
    UpstreamError,
)
from llm.policy import backoff
from llm.providers.wire import retry_after_seconds
from llm.router import Router
from llm.threads import in_worker
from llm.types import CancelToken, GenerationParams, Message
from tests.fakes import ScriptedProvider, settings_for

LONG_ZH = ["压力大的时候", "可以深呼吸，", "适当运动，", "和朋友聊天，", "保证充足睡眠，", "这些都", "很有帮助", "的方法"] * 20


def make_router(*providers, **style):
    return Router(settings_for(*providers, **style), env={}, providers={p.name: p for p in providers})


def test_direct_reply_is_the_default_and_is_never_styled():
    router = Router(settings_for(), env={})
    text = "## 你好 **世界**！这是一段超过二十五个字的话，数字人应该原样读出来，一个字都不改。"
    reply = router.chat(text)
    assert reply.text == text and reply.provider == "direct"


def test_chinese_prompt_gets_the_classic_instruction_as_a_system_message():
    p = ScriptedProvider("cloud")
    reply = make_router(p).chat("如何应对压力", system="你是一个友好的数字人")
    messages, _ = p.calls[0]
    assert messages[0] == Message("system", "你是一个友好的数字人\n请用少于25个字回答以下问题")
    assert messages[-1] == Message("user", "如何应对压力")
    assert reply.text == "你好，我是数字人。"


def test_prefix_style_and_english_instruction():
    p = ScriptedProvider("small", ["Fine."], style_mode="prefix")
    make_router(p).chat("How are you?", max_chars=30)
    messages, _ = p.calls[0]
    assert [m.role for m in messages] == ["user"]
    assert messages[0].content.startswith("Answer the following question in fewer than 30 characters")
    assert messages[0].content.endswith("\nHow are you?")


def test_budget_is_enforced_and_generation_stops_early():
    p = ScriptedProvider("cloud", LONG_ZH)
    reply = make_router(p).chat("怎么缓解压力？")
    assert reply.text == "压力大的时候可以深呼吸，适当运动，和朋友聊天。"
    assert len(reply.text) <= 25
    assert p.yielded <= 9 and p.closed.is_set()     # no sentence end: it reads to 1.5x the budget


def test_style_off_per_call_passes_text_unchanged_and_uncut():
    p = ScriptedProvider("cloud", LONG_ZH)
    reply = make_router(p).chat("怎么缓解压力？", style=False)
    assert reply.text == "".join(LONG_ZH)
    assert all("请用" not in m.content for m in p.calls[0][0])


def test_history_pairs_and_messages_are_accepted_and_fitted_keeping_the_system_prompt():
    p = ScriptedProvider("cloud", context_window=80)
    router = make_router(p)
    old = [["第一个问题" * 5, "第一个回答" * 5], ["第二个问题", "第二个回答"]]
    router.chat("第三个问题", history=old, system="系统提示", params={"max_new_tokens": 16})
    sent = p.calls[0][0]
    assert sent[0].role == "system" and "系统提示" in sent[0].content
    assert [m.content for m in sent[1:]] == ["第二个问题", "第二个回答", "第三个问题"]
    router.chat("再问", history=[{"role": "user", "content": [{"type": "text", "text": "块"}]},
                                {"role": "assistant", "content": "答"}], style=False)
    assert [m.content for m in p.calls[1][0]] == ["块", "答", "再问"]


@pytest.mark.parametrize("kwargs", [
    {"prompt": ""}, {"prompt": "   "}, {"prompt": 5},
    {"prompt": "hi", "history": "not a list"}, {"prompt": "hi", "history": [["only one"]]},
    {"prompt": "hi", "history": [{"role": "robot", "content": "x"}]},
    {"prompt": "hi", "params": {"temperature": 2.5}}, {"prompt": "hi", "params": {"top_p": 0}},
    {"prompt": "hi", "params": {"max_new_tokens": 0}}, {"prompt": "hi", "params": {"temperature": float("nan")}},
    {"prompt": "hi", "max_chars": 0},
])
def test_bad_requests_raise_invalid_request(kwargs):
    router = Router(settings_for(), env={})
    prompt = kwargs.pop("prompt")
    with pytest.raises(InvalidRequestError):
        router.chat(prompt, **kwargs)


def test_unknown_provider_is_404_naming_the_choices():
    with pytest.raises(UnknownProviderError) as e:
        Router(settings_for(), env={}).chat("hi", provider="nobody")
    assert e.value.status == 404 and "direct" in e.value.fix


def test_params_merge_over_provider_defaults():
    p = ScriptedProvider("cloud", generation={"temperature": 0.7, "top_k": 20})
    make_router(p).chat("hi", params=GenerationParams(temperature=0, max_new_tokens=8))
    params = p.calls[0][1]
    assert (params.temperature, params.top_k, params.max_new_tokens, params.greedy) == (0, 20, 8, True)


def test_fallback_when_the_first_fails_before_any_text():
    broken = ScriptedProvider("broken", error=UpstreamError("boom", upstream_status=500), fallback=("backup",))
    backup = ScriptedProvider("backup", ["备用回答。"])
    reply = make_router(broken, backup).chat("你好")
    assert (reply.text, reply.provider) == ("备用回答。", "backup")


def test_a_provider_that_is_not_ready_says_why_and_falls_back():
    settings = settings_for(default="chatgpt")
    router = Router(settings, env={})
    assert not router.status("chatgpt").ready and "OPENAI_API_KEY" in router.status("chatgpt").reason
    with pytest.raises(NotReadyError) as e:
        router.chat("hi")
    assert e.value.status == 503 and "export OPENAI_API_KEY" in e.value.fix
    gpt = replace(settings.providers["chatgpt"], fallback=("direct",))
    router = Router(replace(settings, providers={**settings.providers, "chatgpt": gpt}), env={})
    reply = router.chat("你好")
    assert (reply.text, reply.provider) == ("你好", "direct")


def test_no_fallback_once_text_was_produced():
    half = ScriptedProvider("half", ["一半"], error=UpstreamError("cut"), fail_after=1, fallback=("backup",))
    half.deltas = ["一半", "另一半"]
    backup = ScriptedProvider("backup")
    with pytest.raises(UpstreamError):
        list(make_router(half, backup).stream("你好", style=False))
    assert backup.calls == []


def test_a_whole_reply_falls_back_even_after_text_since_nothing_was_shown():
    half = ScriptedProvider("half", error=UpstreamError("cut"), fail_after=1, fallback=("backup",), retries=0)
    half.deltas = ["一半", "另一半"]
    backup = ScriptedProvider("backup", ["完整的回答。"])
    reply = make_router(half, backup).chat("你好", style=False)
    assert (reply.text, reply.provider) == ("完整的回答。", "backup")


def test_an_empty_reply_is_an_error_so_the_fallback_answers():
    silent = ScriptedProvider("silent", [], fallback=("backup",))
    backup = ScriptedProvider("backup", ["在的。"])
    assert make_router(silent, backup).chat("在吗").provider == "backup"
    with pytest.raises(UpstreamError, match="empty reply"):
        make_router(ScriptedProvider("silent", [])).chat("在吗")


def test_stop_during_a_retry_wait_ends_the_call_at_once():
    flaky = ScriptedProvider("flaky", error=UpstreamError("overloaded", upstream_status=503,
                                                          retry_after=5), retries=2)
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel).start()
    start = time.perf_counter()
    with pytest.raises(CancelledError):
        make_router(flaky).chat("hi", cancel=cancel)
    assert time.perf_counter() - start < 1 and len(flaky.calls) == 1


def test_backoff_grows_with_jitter_and_yields_to_a_short_retry_after():
    waits = [backoff(n) for n in range(6)]
    assert all(0.5 * min(4, 0.25 * 2 ** n) <= w <= min(4, 0.25 * 2 ** n) for n, w in enumerate(waits))
    assert backoff(0, retry_after=1.5) == 1.5 and backoff(0, retry_after=60) is None


@pytest.mark.parametrize("headers, seconds", [
    ({"Retry-After": "2"}, 2.0), ({"retry-after-ms": "1500"}, 1.5), ({"Retry-After": "soon"}, None),
    ({}, None), ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0), ({"Retry-After": "-3"}, 0.0)])
def test_retry_after_is_read_in_every_form(headers, seconds):
    assert retry_after_seconds(headers) == seconds


def test_all_failing_names_every_provider_and_its_error():
    a = ScriptedProvider("a", error=UpstreamError("key rejected", upstream_status=401), fallback=("b",))
    b = ScriptedProvider("b", error=NotReadyError("weights missing"))
    with pytest.raises(AllProvidersFailedError) as e:
        make_router(a, b).chat("hi")
    assert "a: key rejected" in e.value.message and "b: weights missing" in e.value.message
    assert e.value.status == 502 and set(e.value.errors) == {"a", "b"}


def test_all_failing_with_one_status_keeps_it():
    a = ScriptedProvider("a", error=NotReadyError("no key"), fallback=("b",))
    b = ScriptedProvider("b", error=NotReadyError("no weights"))
    with pytest.raises(AllProvidersFailedError) as e:
        make_router(a, b).chat("hi")
    assert e.value.status == 503


def test_cancel_stops_the_stream_and_closes_the_provider():
    p = ScriptedProvider("slow", ["字"] * 200, delay=0.01)
    cancel = CancelToken()
    got = []
    with pytest.raises(CancelledError):
        for chunk in make_router(p).stream("你好", style=False, cancel=cancel):
            got.append(chunk.text)
            if len(got) == 3:
                cancel.cancel()
    assert p.closed.wait(2) and p.yielded < 10


def test_concurrency_slot_serialises_a_limited_provider():
    p = ScriptedProvider("local", ["a", "b"], delay=0.05, max_concurrency=1)
    router = make_router(p)
    threads = [threading.Thread(target=router.chat, args=("hi",), kwargs={"style": False}) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(p.calls) == 4 and p.max_active == 1


def test_astream_never_blocks_the_event_loop_and_overlaps_calls():
    p = ScriptedProvider("cloud", ["慢", "回答。"], delay=0.15)
    router = make_router(p)

    async def one():
        return "".join([c.text async for c in router.astream("你好", style=False)])

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
        t = asyncio.create_task(ticker())
        start = time.perf_counter()
        out = await asyncio.gather(*[one() for _ in range(8)])
        elapsed = time.perf_counter() - start
        t.cancel()
        return out, elapsed, ticks

    out, elapsed, ticks = asyncio.run(main())
    assert out == ["慢回答。"] * 8
    assert elapsed < 8 * 0.3 / 2 and ticks > 10


def test_leaving_astream_early_cancels_generation():
    p = ScriptedProvider("cloud", ["字"] * 500, delay=0.005)
    router = make_router(p)

    async def main():
        async for _ in router.astream("你好", style=False):
            break

    asyncio.run(main())
    assert p.closed.wait(2) and p.yielded < 100


def test_cancel_wakes_an_astream_waiting_on_a_slow_upstream():
    p = ScriptedProvider("cloud", ["迟到的回答"], delay=3.0)
    router = make_router(p)
    cancel = CancelToken()

    async def main():
        asyncio.get_running_loop().call_later(0.1, cancel.cancel)
        start = time.perf_counter()
        with pytest.raises(CancelledError):
            async for _ in router.astream("你好", style=False, cancel=cancel):
                pass
        return time.perf_counter() - start

    assert asyncio.run(main()) < 1.5


def test_achat_returns_timings_and_provider():
    reply = asyncio.run(Router(settings_for(), env={}).achat("你好"))
    assert reply.text == "你好" and reply.provider == "direct"
    assert reply.timings["total_ms"] >= reply.timings["ttft_ms"] >= 0


def test_a_worker_stopped_by_its_cancel_ends_the_read_instead_of_leaving_it_waiting():
    def items():
        yield "never read"

    async def main():
        cancel = CancelToken()
        cancel.cancel()     # before the first item: the worker stops without making one
        with pytest.raises(CancelledError):
            await asyncio.wait_for(anext(in_worker(items, cancel, name="llm-test")), 5)

    asyncio.run(main())
