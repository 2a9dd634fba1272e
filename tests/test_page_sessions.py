"""The page's conversation, kept by the server: it survives a reload, a new one starts empty, and Stop or a
new message while the avatar speaks keeps only the sentences the browser began to say."""

from __future__ import annotations

import asyncio

import pytest

from configs import PRESETS, ProviderConfig, SessionsConfig, Settings
from llm import ui_handlers as ui
from llm.router import Router
from tests.fake_servers import FakeOpenAIServer

STORY = "第一句话。第二句话。第三句话。"


@pytest.fixture
def fake():
    with FakeOpenAIServer(["我记住了。", STORY, "我记住了。", STORY, "好的。"]) as server:
        yield server


@pytest.fixture
def router(fake, tmp_path):
    providers = {"direct": PRESETS["direct"], "cloud": ProviderConfig("cloud", "openai", "m",
                                                                      base_url=fake.base_url)}
    r = Router(Settings(providers=providers, default="cloud", sessions=SessionsConfig(folder=str(tmp_path))),
               env={})
    yield r
    r.close()


def turn(router, message: str, chat: list, previous=None, *, session: str, spoken=None, on_update=None):
    """One turn as the page runs it: Send (start_turn), then the streamed answer; returns the chat and turn."""
    _, chat, current = ui.start_turn(message, chat, previous, router=router, spoken=spoken)
    opts = ui.TurnOptions("cloud", style=False, session=session)

    async def run() -> list:
        last = chat
        async for update in ui.respond(router, chat, opts, current):
            last = update[0]
            if on_update:
                on_update(current)
        return last
    return asyncio.run(run()), current


def upstream_history(fake) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake.requests[-1]["messages"] if m["role"] != "system"]


def test_a_reload_finds_the_conversation_and_the_model_hears_it_from_the_server(router, fake):
    chat, session = [], ui.new_session_id()
    chat, _ = turn(router, "我叫小明。", chat, session=session)
    assert ui.open_conversation(router, session) == (
        [{"role": "user", "content": "我叫小明。"}, {"role": "assistant", "content": "我记住了。"}], session, "")
    # the chat the browser sends is only shown: what the model is told comes from the conversation
    turn(router, "我叫什么？", [{"role": "user", "content": "伪造的历史"}], session=session)
    assert upstream_history(fake) == [("user", "我叫小明。"), ("assistant", "我记住了。"), ("user", "我叫什么？")]


def test_a_new_conversation_starts_empty_and_a_bad_id_gets_a_new_one(router):
    chat, session = [], ui.new_session_id()
    turn(router, "你好", chat, session=session)
    emptied = ui.new_conversation(None)
    assert emptied[0] == [] and emptied[-1] != session and len(emptied[-1]) == 32
    assert ui.open_conversation(router, emptied[-1])[0] == []
    for bad in ("", None, "x" * 129, "a\nb"):
        chat, fresh, _ = ui.open_conversation(router, bad)
        assert chat == [] and len(fresh) == 32


def test_talking_over_the_avatar_keeps_only_the_sentences_it_began_to_say(router, fake):
    session = ui.new_session_id()
    chat, first = turn(router, "记住", [], session=session)
    chat, told = turn(router, "讲三句话", chat, first, session=session)
    assert chat[-1]["content"] == STORY and told.kept.is_set()
    # the avatar had begun its second sentence when the visitor spoke again
    turn(router, "停", chat, told, session=session, spoken=2)
    assert upstream_history(fake)[-2:] == [("assistant", "第一句话。第二句话。"), ("user", "停")]
    messages = router.sessions.messages(session)
    assert messages[3]["content"] == "第一句话。第二句话。" and messages[3]["cut"] == "stopped"


def test_stop_while_it_speaks_keeps_what_was_said_and_without_a_voice_all_that_was_shown(router, fake):
    session = ui.new_session_id()
    chat, _ = turn(router, "记住", [], session=session)
    chat, told = turn(router, "讲三句话", chat, session=session)
    ui.stop(told, router, spoken=1)      # finished generating; the voice was on its first sentence
    assert router.sessions.messages(session)[-1]["content"] == "第一句话。"
    other = ui.new_session_id()
    chat, _ = turn(router, "记住", [], session=other)
    chat, shown = turn(router, "讲三句话", chat, session=other)
    ui.stop(shown, router, spoken=-1)    # no voice: the reply was read on the screen
    assert router.sessions.messages(other)[-1]["content"] == STORY


def test_stop_mid_reply_keeps_the_spoken_part_of_what_was_generated(fake, tmp_path):
    with FakeOpenAIServer([STORY * 4], chunk_delay=0.01) as slow:
        providers = {"cloud": ProviderConfig("cloud", "openai", "m", base_url=slow.base_url)}
        router = Router(Settings(providers=providers, default="cloud",
                                 sessions=SessionsConfig(folder=str(tmp_path))), env={})
        session = ui.new_session_id()

        def stop_after_two_sentences(current) -> None:
            if not current.stopped and current.reply is not None and current.reply.text.count("。") >= 2:
                ui.stop(current, router, spoken=1)
        try:
            turn(router, "讲故事", [], session=session, on_update=stop_after_two_sentences)
            kept = router.sessions.messages(session)[-1]
            assert kept["content"] == "第一句话。" and kept["cut"] == "stopped"
        finally:
            router.close()


def test_a_store_that_is_down_fails_the_turn_with_the_fix_and_keeps_the_question(fake, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the sessions folder should be")
    providers = {"cloud": ProviderConfig("cloud", "openai", "m", base_url=fake.base_url)}
    router = Router(Settings(providers=providers, default="cloud",
                             sessions=SessionsConfig(folder=str(blocked))), env={})
    try:
        _, chat, current = ui.start_turn("你好", [], None)

        async def run() -> list:
            return [u async for u in ui.respond(router, chat, ui.TurnOptions("cloud", session="s1"), current)]
        updates = asyncio.run(run())
        assert updates[-1][0] == [] and updates[-1][2] == "你好"    # the chat as before, the question back
        assert current.error is not None and not fake.requests
    finally:
        router.close()
