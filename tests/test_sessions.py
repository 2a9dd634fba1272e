"""Conversations the server keeps: `"session"` on the seed route, GET/DELETE /sessions/{id}, a history
that holds what was heard, in SQLite (surviving a restart) or a PostgreSQL shared by two servers."""

from __future__ import annotations

import json
import time

import pytest
import requests

from configs import ProviderConfig, SessionsConfig
from tests.api_helpers import assert_error, serve_router
from tests.fake_servers import FakeOpenAIServer
from tests.postgres import binaries, postgres_server

STORY = "第一句话。第二句话。第三句话。"


@pytest.fixture
def fake():
    with FakeOpenAIServer(["好的。", "明白了。", STORY]) as server:
        yield server


def serve(fake, folder, **kw):
    cloud = ProviderConfig("cloud", "openai", "m", base_url=fake.base_url)
    return serve_router([cloud], default="cloud", sessions=SessionsConfig(folder=str(folder), **kw.pop(
        "sessions", {})), **kw)


def ask(server, **body) -> dict:
    reply = requests.post(server.url, json=body, timeout=20)
    assert reply.status_code == 200, reply.text
    return reply.json()


def two_sentences_of_a_story(server, session: str):
    """A streamed long story on `session`, read as far as its second sentence: (response, the rest of its
    lines, the two sentences)."""
    first = requests.post(server.url, json={"prompt": "讲个长故事", "session": session, "stream": True},
                          stream=True, timeout=30)
    lines, heard = first.iter_lines(decode_unicode=True), []
    for line in lines:
        if line.startswith("data: ") and '"sentence"' in line:
            heard.append(json.loads(line[6:])["sentence"])
            if len(heard) == 2:
                break
    return first, lines, heard


def said_to_upstream(fake) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake.requests[-1]["messages"] if m["role"] != "system"]


def test_a_session_remembers_its_turns_and_another_does_not(fake, tmp_path):
    server = serve(fake, tmp_path)
    try:
        assert ask(server, prompt="我叫小明。", session="kiosk-1")["session"] == "kiosk-1"
        ask(server, prompt="我叫什么？", session="kiosk-1")
        assert said_to_upstream(fake) == [("user", "我叫小明。"), ("assistant", "好的。"), ("user", "我叫什么？")]
        ask(server, prompt="你好", session="kiosk-2")
        assert said_to_upstream(fake) == [("user", "你好")]
        ask(server, prompt="只问这一次", session="kiosk-1", history=[])     # its own history wins
        assert said_to_upstream(fake) == [("user", "只问这一次")]
    finally:
        server.stop()
    again = serve(fake, tmp_path)      # a restart with the same store
    try:
        kept = requests.get(f"{again.url}/sessions/kiosk-1", timeout=10).json()
        assert [(m["role"], m["content"]) for m in kept["messages"]][:4] == [
            ("user", "我叫小明。"), ("assistant", "好的。"), ("user", "我叫什么？"), ("assistant", "明白了。")]
        assert kept["messages"][1]["provider"] == "cloud" and kept["messages"][0]["at"] <= time.time()
        assert requests.delete(f"{again.url}/sessions/kiosk-1", timeout=10).json() == {
            "session": "kiosk-1", "deleted": True}
        assert_error(requests.get(f"{again.url}/sessions/kiosk-1", timeout=10), 404, "not_found")
    finally:
        again.stop()


def test_bad_and_unknown_ids(fake, tmp_path):
    server = serve(fake, tmp_path)
    try:
        assert_error(requests.get(f"{server.url}/sessions/nobody", timeout=10), 404)
        assert_error(requests.delete(f"{server.url}/sessions/nobody", timeout=10), 404)
        assert_error(requests.get(f"{server.url}/sessions/{'x' * 129}", timeout=10), 422)
        assert_error(requests.get(f"{server.url}/sessions/a%01b", timeout=10), 422)
        for bad in ("x" * 129, "a\nb", ""):
            assert_error(requests.post(server.url, json={"prompt": "hi", "session": bad}, timeout=10), 422)
        assert ask(server, prompt="hi", session="new-one")["response"]     # unknown on POST: a fresh history
        assert said_to_upstream(fake) == [("user", "hi")]
    finally:
        server.stop()


def test_max_turns_and_ttl(fake, tmp_path):
    server = serve(fake, tmp_path / "a", sessions={"max_turns": 1})
    try:
        ask(server, prompt="一", session="s")
        ask(server, prompt="二", session="s")
        kept = requests.get(f"{server.url}/sessions/s", timeout=10).json()["messages"]
        assert [m["content"] for m in kept] == ["二", "明白了。"]
    finally:
        server.stop()
    short = serve(fake, tmp_path / "b", sessions={"ttl": 1e-9})    # every session has expired by its next turn
    try:
        ask(short, prompt="一", session="s")
        ask(short, prompt="二", session="s")
        assert said_to_upstream(fake) == [("user", "二")]
    finally:
        short.stop()


def test_a_stream_keeps_what_was_heard_and_a_hang_up_keeps_no_more(tmp_path):
    with FakeOpenAIServer([STORY], chunk_delay=0.05, chunks=30) as slow:
        server = serve(slow, tmp_path)
        try:
            with requests.post(server.url, json={"prompt": "讲吧", "session": "whole", "stream": True},
                               stream=True, timeout=20) as reply:
                lines = [line for line in reply.iter_lines(decode_unicode=True) if line]
            assert '"session": "whole"' in lines[-1]
            kept = requests.get(f"{server.url}/sessions/whole", timeout=10).json()["messages"]
            assert kept[-1]["content"] == STORY and "cut" not in kept[-1]

            with requests.post(server.url, json={"prompt": "讲吧", "session": "cut", "stream": True},
                               stream=True, timeout=20) as reply:
                for line in reply.iter_lines(decode_unicode=True):
                    if line.startswith("data: "):
                        break   # one sentence heard, then the client hangs up
            deadline = time.monotonic() + 10
            while (got := requests.get(f"{server.url}/sessions/cut", timeout=10)).status_code == 404:
                assert time.monotonic() < deadline, "the cut turn was never kept"
                time.sleep(0.05)
            last = got.json()["messages"][-1]
            assert last["content"] == "第一句话。" and last["cut"] == "hung_up"
        finally:
            server.stop()


@pytest.mark.skipif(binaries() is None, reason="needs PostgreSQL: apt-get install postgresql")
def test_two_servers_share_sessions_through_postgresql_and_a_store_that_is_down_is_a_503(fake, tmp_path):
    with postgres_server() as url:
        one, two = serve(fake, tmp_path / "a", store=url), serve(fake, tmp_path / "b", store=url)
        try:
            ask(one, prompt="我叫小明。", session="shared")
            ask(two, prompt="我叫什么？", session="shared")
            assert said_to_upstream(fake)[:2] == [("user", "我叫小明。"), ("assistant", "好的。")]
        finally:
            one.stop()
    try:    # the server is gone
        reply = requests.post(two.url, json={"prompt": "还在吗", "session": "shared"}, timeout=20)
        error = assert_error(reply, 503)
        assert "PostgreSQL" in error["message"]
    finally:
        two.stop()


def test_a_new_prompt_cuts_off_the_reply_still_going_and_the_history_holds_what_was_heard(tmp_path):
    long_story = "".join(f"第{n}句话。" for n in range(1, 40))
    with FakeOpenAIServer([long_story, "好的。"], chunk_delay=0.03, chunks=60) as slow:
        server = serve(slow, tmp_path, short_answer=False)
        try:
            first, lines, heard = two_sentences_of_a_story(server, "b")   # then the visitor talks over it
            second = requests.post(server.url, json={"prompt": "停，换个话题", "session": "b"}, timeout=30)
            assert second.status_code == 200, second.text
            rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
            first.close()
            assert rest and "error" in rest[-1] and len(heard) + len(rest) - 1 < 39   # it ended early
            sent_to_first = slow.chunks_sent
            # the second request's upstream history: the first turn as far as it was heard, no marker
            said = [(m["role"], m["content"]) for m in slow.requests[-1]["messages"] if m["role"] != "system"]
            assert said[:2] == [("user", "讲个长故事"), ("assistant", "".join(heard + [
                e["sentence"] for e in rest if "sentence" in e]))]
            assert said[2] == ("user", "停，换个话题")
            kept = requests.get(f"{server.url}/sessions/b", timeout=10).json()["messages"]
            assert kept[1]["cut"] == "barged_in" and "cut" not in kept[3]
            assert slow.chunks_sent == sent_to_first    # the first upstream stream was closed, not drained
        finally:
            server.stop()


@pytest.mark.skipif(binaries() is None, reason="needs PostgreSQL: apt-get install postgresql")
def test_a_prompt_through_one_server_cuts_off_the_reply_another_server_is_streaming(tmp_path):
    long_story = "".join(f"第{n}句话。" for n in range(1, 40))
    with FakeOpenAIServer(["你好。", long_story, "好的。"], chunk_delay=0.03, chunks=60) as slow, \
            postgres_server() as url:
        one = serve(slow, tmp_path / "a", store=url, short_answer=False)
        two = serve(slow, tmp_path / "b", store=url, short_answer=False)
        try:
            ask(two, prompt="你好", session="warm")     # each server has listened since its first session turn
            first, lines, heard = two_sentences_of_a_story(one, "k")
            second = requests.post(two.url, json={"prompt": "停，换个话题", "session": "k"}, timeout=30)
            assert second.status_code == 200, second.text
            rest = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
            first.close()
            assert rest and "error" in rest[-1] and len(heard) + len(rest) - 1 < 39   # cut off early
            said = [(m["role"], m["content"]) for m in slow.requests[-1]["messages"] if m["role"] != "system"]
            delivered = "".join(heard + [e["sentence"] for e in rest if "sentence" in e])
            assert said == [("user", "讲个长故事"), ("assistant", delivered), ("user", "停，换个话题")]
            kept = requests.get(f"{one.url}/sessions/k", timeout=10).json()["messages"]
            assert kept[1]["cut"] == "barged_in" and [m["role"] for m in kept] == ["user", "assistant"] * 2
        finally:
            one.stop()
            two.stop()


def test_a_client_that_knows_what_was_heard_says_so(tmp_path):
    with FakeOpenAIServer([STORY, STORY, "好。"]) as fake:
        server = serve(fake, tmp_path, short_answer=False)
        try:
            ask(server, prompt="讲吧", session="h")
            kept = requests.post(f"{server.url}/sessions/h/heard", json={"sentences": 1}, timeout=10)
            assert kept.json() == {"session": "h", "reply": "第一句话。"}
            assert requests.get(f"{server.url}/sessions/h", timeout=10).json()["messages"][1]["cut"] == "stopped"
            ask(server, prompt="再讲", session="h")
            ask(server, prompt="然后呢", session="h", heard=2)     # said in the next request instead
            assert said_to_upstream(fake) == [("user", "讲吧"), ("assistant", "第一句话。"), ("user", "再讲"),
                                              ("assistant", "第一句话。第二句话。"), ("user", "然后呢")]
            assert_error(requests.post(f"{server.url}/sessions/none/heard", json={"sentences": 1}, timeout=10),
                         404)
            assert_error(requests.post(f"{server.url}/sessions/h/heard", json={"sentences": -1}, timeout=10),
                         422)
        finally:
            server.stop()


def test_v1_takes_the_session_through_extra_body(fake, tmp_path):
    import openai

    server = serve(fake, tmp_path)
    try:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=20)
        sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "我叫小明。"}],
                                    extra_body={"session": "v1"})
        list(sdk.chat.completions.create(model="cloud", stream=True, extra_body={"session": "v1"},
                                         messages=[{"role": "system", "content": "Be brief."},
                                                   {"role": "user", "content": "我叫什么？"}]))
        assert said_to_upstream(fake) == [("user", "我叫小明。"), ("assistant", "好的。"), ("user", "我叫什么？")]
        kept = requests.get(f"{server.url}/sessions/v1", timeout=10).json()["messages"]
        assert [m["content"] for m in kept] == ["我叫小明。", "好的。", "我叫什么？", "明白了。"]
    finally:
        server.stop()


@pytest.mark.skipif(binaries() is None, reason="needs PostgreSQL: apt-get install postgresql")
def test_64_sessions_of_10_turns_across_two_servers_lose_mix_or_repeat_nothing(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with postgres_server() as url:
        servers = [serve_router(sessions=SessionsConfig(folder=str(tmp_path / name)), store=url)
                   for name in ("a", "b")]
        try:
            def talk(n: int) -> None:
                with requests.Session() as http:
                    for turn in range(10):      # the turns of one session alternate between the servers
                        reply = http.post(servers[turn % 2].url, timeout=60,
                                          json={"prompt": f"s{n}-t{turn}", "session": f"s{n}"})
                        assert reply.status_code == 200, reply.text
                        assert reply.json()["history"][0][0] == f"s{n}-t0"     # its own, from the start

            with ThreadPoolExecutor(64) as pool:
                list(pool.map(talk, range(64)))
            for n in range(64):
                kept = requests.get(f"{servers[n % 2].url}/sessions/s{n}", timeout=10).json()["messages"]
                assert [m["content"] for m in kept] == [f"s{n}-t{t}" for t in range(10) for _ in (0, 1)]
        finally:
            for server in servers:
                server.stop()
