"""Replicas: one provider, several OpenAI-compatible servers (`base_urls`): the least busy answers, a
conversation stays on one server, a server that dies hands its conversations on with no client error."""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from configs import ProviderConfig, Settings, load_settings
from llm.errors import ConfigError, UpstreamError
from llm.replicas import Replicas
from llm.router import Router
from tests.api_helpers import serve_router
from tests.fake_servers import FakeOpenAIServer

SESSIONS, TURNS = 40, 3


def replicated(*fakes, **kw) -> ProviderConfig:
    return ProviderConfig("farm", "openai", "m", base_urls=tuple(f.base_url for f in fakes),
                          base_url=fakes[0].base_url, **kw)


def sessions_seen(fake) -> dict[str, list[int]]:
    """session -> the turns this server answered for it (the prompts say "s<i> t<turn>")."""
    seen = defaultdict(list)
    for body in list(fake.requests):
        last = body["messages"][-1]["content"]
        session, turn = re.fullmatch(r"s(\d+) t(\d+)", last).groups()
        seen[session].append(int(turn))
    return seen


def test_each_conversation_stays_on_one_replica_and_a_dead_one_hands_its_conversations_on(tmp_path):
    with FakeOpenAIServer(["好的。"], chunk_delay=0.002) as a, FakeOpenAIServer(["好的。"], chunk_delay=0.002) as b:
        server, b_url = serve_router([replicated(a, b)], default="farm"), b.base_url
        errors: list[str] = []

        def turn(session: int, t: int) -> None:
            reply = requests.post(server.url, json={"prompt": f"s{session} t{t}", "session": f"kiosk-{session}",
                                                    "style": "none"}, timeout=30)
            if reply.status_code != 200 or reply.json()["response"] != "好的。":
                errors.append(f"{reply.status_code} {reply.text[:200]}")

        try:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda s: turn(s, 1), range(SESSIONS)))
                first_a, first_b = sessions_seen(a), sessions_seen(b)
                assert not set(first_a) & set(first_b)
                assert 0.35 <= len(first_a) / SESSIONS <= 0.65, (len(first_a), len(first_b))
                list(pool.map(lambda s: turn(s, 2), range(SESSIONS)))
                for fake in (a, b):     # turn 2 of every conversation went where turn 1 went
                    assert all(turns == [1, 2] for turns in sessions_seen(fake).values())

                answered_b = len(b.requests)
                dying = threading.Thread(target=lambda: (_until(lambda: len(b.requests) > answered_b + 3),
                                                         b.stop()))
                dying.start()       # b dies while the third turns are under way
                list(pool.map(lambda s: turn(s, 3), range(SESSIONS)))
                dying.join()
                list(pool.map(lambda s: turn(s, 4), range(SESSIONS)))
            held = server.router.replicas("farm").conversations()
        finally:
            server.stop()
        assert errors == []
        assert held == {f"farm@{a.base_url}": SESSIONS, f"farm@{b_url}": 0}     # b's moved to a, for good


def _until(condition, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.002)


def test_a_conversation_moves_for_good_after_its_replica_failed():
    with FakeOpenAIServer(["好的。"]) as a, FakeOpenAIServer(["好的。"], faults=["status:503"]) as b:
        router = Router(Settings(providers={"farm": replicated(a, b)}, default="farm"), env={})
        try:
            keys = router.replicas("farm").keys
            for i in range(6):
                assert router.chat(f"s{i} t1", provider="farm", affinity=f"c{i}").text == "好的。"
            assert len(a.requests) == 6 and 0 < len(b.requests) <= 6   # b was asked, failed, a answered
            tried_b = len(b.requests)
            for i in range(6):
                router.chat(f"s{i} t2", provider="farm", affinity=f"c{i}")
            assert len(b.requests) == tried_b       # no conversation went back to b
            assert router.replicas("farm").conversations() == {keys[0]: 6, keys[1]: 0}
            assert router.status("farm").ready      # one replica answers: the provider is ready
        finally:
            router.close()


def test_a_provider_with_replicas_cools_down_only_when_all_of_them_do():
    with FakeOpenAIServer(faults=["status:503"]) as a, FakeOpenAIServer(faults=["status:503"]) as b:
        router = Router(Settings(providers={"farm": replicated(a, b, cooldown=60)}, default="farm"), env={})
        try:
            for _ in range(3):
                with pytest.raises(UpstreamError, match="503"):
                    router.chat("hi", provider="farm")
            status = router.status("farm")
            assert not status.ready and "cooling down" in status.reason and "503" in status.last_error
            assert len(a.requests) == len(b.requests) == 3      # each try went to both, no retries
        finally:
            router.close()


def test_the_least_busy_replica_is_asked_first_and_equals_take_turns():
    replicas = Replicas(["x", "y", "z"])
    busy = {"x": 2, "y": 0, "z": 1}
    assert replicas.order(None, busy.get, lambda k: False) == ["y", "z", "x"]
    busy = dict.fromkeys("xyz", 0)
    firsts = [replicas.order(None, busy.get, lambda k: False)[0] for _ in range(6)]
    assert sorted(firsts) == ["x", "x", "y", "y", "z", "z"]
    first = replicas.order("kiosk", busy.get, lambda k: False)[0]
    busy[first] = 5     # busier now, yet the conversation stays while its replica is healthy
    assert replicas.order("kiosk", busy.get, lambda k: False)[0] == first
    other = replicas.order("kiosk", busy.get, lambda k: k == first)
    assert other[0] != first and other[-1] == first     # cooling: last, where its breaker may probe it
    assert replicas.order("kiosk", busy.get, lambda k: False)[0] == other[0]   # and it stays moved


def test_processes_that_share_nothing_pick_alike_for_a_new_conversation():
    idle = {"p": 0, "q": 0}.get
    # a fresh process breaks the tie between idle replicas by the conversation's hash, not by chance
    picks = [Replicas(["p", "q"]).order(f"c{i}", idle, lambda k: False)[0] for i in range(20)]
    assert picks == [Replicas(["p", "q"]).order(f"c{i}", idle, lambda k: False)[0] for i in range(20)]
    assert set(picks) == {"p", "q"}


@pytest.mark.parametrize("entry, says", [
    ({"kind": "gemini", "model": "m", "base_urls": ["http://a:1/v1", "http://b:1/v1"]}, "only the openai kind"),
    ({"kind": "openai", "model": "m", "base_urls": ["a:1/v1"]}, "http(s)://"),
    ({"kind": "openai", "model": "m", "base_urls": ["http://a:1/v1", "http://a:1/v1/"]}, "twice"),
    ({"kind": "openai", "model": "m", "base_urls": ["http://a:1/v1"], "base_url": "http://c:1"}, "alone"),
    ({"kind": "openai", "model": "m", "base_urls": [8000]}, "a list of URLs"),
])
def test_bad_base_urls_are_refused_with_the_reason(tmp_path, entry, says):
    path = tmp_path / "configs.yaml"
    path.write_text(yaml.safe_dump({"providers": {"farm": entry}}))
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_settings(path, env={})


def test_base_urls_make_base_url_the_first(tmp_path):
    path = tmp_path / "configs.yaml"
    path.write_text("providers:\n  farm: {kind: openai, model: m, base_urls: [http://a:1/v1, http://b:1/v1]}\n")
    cfg = load_settings(path, env={}).providers["farm"]
    assert cfg.base_url == "http://a:1/v1" and cfg.base_urls == ("http://a:1/v1", "http://b:1/v1")


def test_v1_keeps_a_user_on_one_replica_and_health_shows_each_server():
    with FakeOpenAIServer(["好的。"]) as a, FakeOpenAIServer(["好的。"]) as b:
        server = serve_router([replicated(a, b)], default="farm")
        try:
            def ask(**extra) -> None:
                reply = requests.post(f"{server.url}/v1/chat/completions", timeout=20, json={
                    "model": "farm", "messages": [{"role": "user", "content": "s0 t1"}], **extra})
                assert reply.status_code == 200, reply.text
            for _ in range(4):
                ask(user="visitor-7")
            assert sorted([len(a.requests), len(b.requests)]) == [0, 4]
            for _ in range(4):      # no conversation: equals take turns
                ask()
            assert sorted([len(a.requests), len(b.requests)]) == [2, 6]
            health = requests.get(f"{server.url}/health", timeout=10).json()["providers"]["farm"]
            assert [(r["url"], r["conversations"], r["busy"], r["cooldown_s"]) for r in health["replicas"]] \
                in ([(a.base_url, 1, 0, 0), (b.base_url, 0, 0, 0)], [(a.base_url, 0, 0, 0), (b.base_url, 1, 0, 0)])
        finally:
            server.stop()
