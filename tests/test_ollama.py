"""Ollama discovery (llm/ollama.py): a server's models as `ollama/<model>` providers, against a fake Ollama.

No test sleeps or measures time: a probe is waited for on `probed`, or run now with `refresh()`."""

from __future__ import annotations

import threading

import pytest
import requests

from configs import PRESETS, ProviderConfig, Settings
from llm import ollama
from llm.ollama import OllamaDiscovery, discover, ollama_url
from llm.providers.echo import EchoProvider
from llm.router import Router
from tests.api_helpers import free_port, serve_router
from tests.fake_servers import FakeOllamaServer, refused_url

QWEN, LLAMA = "qwen2.5:0.5b", "llama3.2:1b"
CONFIGURED = ["direct", "chatgpt"]


def settings(*extra: ProviderConfig) -> Settings:
    return Settings(providers={**{n: PRESETS[n] for n in CONFIGURED}, **{c.name: c for c in extra}})


@pytest.fixture
def started():
    """Start discovery for a router; stopped (and the router closed) after the test."""
    made: list[tuple[Router, OllamaDiscovery | None]] = []

    def start(router: Router, **kw) -> OllamaDiscovery | None:
        found = discover(router, **kw)
        made.append((router, found))
        return found

    yield start
    for router, found in made:
        if found is not None:
            found.stop()
        router.close()


def probed(found: OllamaDiscovery | None) -> OllamaDiscovery:
    assert found is not None
    assert found.probed.wait(10), "the first probe never finished"
    return found


# ---- $OLLAMA_HOST, read as Ollama reads it -------------------------------------------------------

@pytest.mark.parametrize(("value", "url"), [
    (None, "http://127.0.0.1:11434"),
    ("", "http://127.0.0.1:11434"),
    ("127.0.0.1:11434", "http://127.0.0.1:11434"),
    ("0.0.0.0", "http://127.0.0.1:11434"),                   # the server's "every address": here, loopback
    ("0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("localhost", "http://localhost:11434"),
    ("ollama:11434", "http://ollama:11434"),                  # a container's name
    ("http://localhost:11434", "http://localhost:11434"),
    ("http://example.com", "http://example.com:80"),          # a scheme without a port: its own port
    ("https://ollama.example.com/", "https://ollama.example.com:443"),
    ("HTTPS://ollama.example.com:8443", "https://ollama.example.com:8443"),
    ("http://gpu-box:11434/ollama/", "http://gpu-box:11434/ollama"),   # behind a proxy's path
    ("  '10.0.0.5:11434'  ", "http://10.0.0.5:11434"),        # quotes and spaces, as a shell file leaves them
    ("host:notaport", "http://host:11434"),                   # a bad port: the default, as Ollama does
    ("[::]:11434", "http://[::1]:11434"),
    ("::", "http://[::1]:11434"),
    ("::1", "http://[::1]:11434"),
    ("[fe80::1]", "http://[fe80::1]:11434"),
    (":11500", "http://127.0.0.1:11500"),
])
def test_ollama_host_is_read_as_ollama_reads_it(value, url):
    assert ollama_url(value) == url


@pytest.mark.parametrize("value", ["off", "OFF", "none", "0", "false", " off "])
def test_ollama_host_off_turns_discovery_off(value):
    assert ollama_url(value) is None


def test_an_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="http or https"):
        ollama_url("tcp://127.0.0.1:11434")


@pytest.mark.parametrize("env", [{"OLLAMA_HOST": "off"}, {"LLM_OLLAMA": "off"}, {"LLM_OLLAMA": "0"},
                                 {"OLLAMA_HOST": "ftp://x"}])
def test_discovery_turned_off_starts_nothing(env):
    router = Router(settings(), env=env)
    before = {t.name for t in threading.enumerate()}
    assert discover(router) is None
    assert "ollama-discovery" not in {t.name for t in threading.enumerate()} - before
    assert router.names() == CONFIGURED


def test_a_router_alone_never_probes():
    """Discovery is the entry points' choice: a router (every other test's) asks no one."""
    with FakeOllamaServer() as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        assert router.names() == CONFIGURED and router.statuses().keys() == set(CONFIGURED)
        router.close()
        assert fake.gets == []


# ---- discovered models ---------------------------------------------------------------------------

def test_discovered_models_are_ready_providers_of_the_openai_kind(started):
    embedder = {"name": "nomic-embed-text:latest", "model": "nomic-embed-text:latest",
                "details": {"family": "nomic-bert", "families": ["nomic-bert"]}}
    with FakeOllamaServer(models=[QWEN, LLAMA, embedder]) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        probed(started(router))
        assert router.names() == [*CONFIGURED, f"ollama/{QWEN}", f"ollama/{LLAMA}"]    # no embedding model
        cfg = router.settings.providers[f"ollama/{QWEN}"]
        assert (cfg.kind, cfg.model, cfg.label) == ("openai", QWEN, f"Ollama · {QWEN}")
        assert cfg.base_url == fake.base_url == f"http://{fake.host}/v1"
        statuses = router.statuses()
        assert statuses[f"ollama/{QWEN}"].ready and statuses[f"ollama/{LLAMA}"].ready
        assert "/api/tags" in fake.gets


def test_a_chat_reaches_ollama_with_its_model_name(started):
    with FakeOllamaServer(["你好，我在。"], models=[QWEN]) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        probed(started(router))
        reply = router.chat("你好", provider=f"ollama/{QWEN}", style=False)
        assert reply.text == "你好，我在。" and reply.provider == f"ollama/{QWEN}"
        [sent] = fake.requests
        assert sent["_path"] == "/v1/chat/completions" and sent["model"] == QWEN and sent["stream"] is True


def test_startup_never_waits_for_the_probe(started):
    """The router is built and lists its providers while the probe is held mid-way by the server."""
    gate = threading.Event()
    with FakeOllamaServer(models=[QWEN], gate=gate) as fake:
        try:
            router = Router(settings(), env={"OLLAMA_HOST": fake.host})
            found = started(router)
            assert router.names() == CONFIGURED
            assert set(router.statuses()) == set(CONFIGURED)
            assert not found.probed.is_set()     # still held: the calls above did not wait for it
        finally:
            gate.set()
        probed(found)
        assert f"ollama/{QWEN}" in router.names()


def test_no_server_lists_nothing(started):
    router = Router(settings(), env={"OLLAMA_HOST": refused_url()})
    found = probed(started(router))
    assert not found.up and found.error
    assert router.names() == CONFIGURED


def test_a_one_shot_probe_runs_at_once_without_a_thread(started):
    with FakeOllamaServer(models=[QWEN]) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        found = started(router, background=False)
        assert found._thread is None and found.probed.is_set()
        assert router.names()[-1] == f"ollama/{QWEN}"


def test_the_env_given_wins_over_the_routers(started):
    with FakeOllamaServer(models=[QWEN]) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": "off"})
        probed(started(router, env={"OLLAMA_HOST": f"http://{fake.host}"}))
        assert f"ollama/{QWEN}" in router.names()


# ---- later: a server started, a model pulled, a server gone ----------------------------------------

def test_a_server_started_later_appears_on_the_next_probe(started):
    port = free_port()
    router = Router(settings(), env={"OLLAMA_HOST": f"127.0.0.1:{port}"})
    found = probed(started(router))
    assert router.names() == CONFIGURED
    with FakeOllamaServer(models=[QWEN], port=port):
        assert found.refresh() == [f"ollama/{QWEN}"]
        assert router.names() == [*CONFIGURED, f"ollama/{QWEN}"]
        assert router.status(f"ollama/{QWEN}").ready


def test_a_model_pulled_later_appears_and_one_removed_is_not_ready(started):
    with FakeOllamaServer(models=[QWEN]) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        found = probed(started(router))
        fake.models.append(LLAMA)
        assert found.refresh() == [f"ollama/{LLAMA}"]
        fake.models.remove(QWEN)
        assert found.refresh() == []
        assert router.names() == [*CONFIGURED, f"ollama/{QWEN}", f"ollama/{LLAMA}"]   # still listed
        gone = router.status(f"ollama/{QWEN}")
        assert not gone.ready and QWEN in gone.reason and gone.fix == f"ollama pull {QWEN}"
        assert router.status(f"ollama/{LLAMA}").ready


def test_a_server_gone_leaves_its_models_listed_not_ready_until_it_is_back(started):
    port = free_port()
    fake = FakeOllamaServer(models=[QWEN], port=port)
    with fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        found = probed(started(router))
        assert router.status(f"ollama/{QWEN}").ready
    found.refresh()     # the server has stopped
    status = router.status(f"ollama/{QWEN}")
    assert f"ollama/{QWEN}" in router.names()
    assert not status.ready and "does not answer" in status.reason and status.fix.startswith("ollama serve")
    with FakeOllamaServer(models=[QWEN], port=port):
        found.refresh()
        assert router.status(f"ollama/{QWEN}").ready


def test_the_background_thread_probes_again_and_stops(started):
    with FakeOllamaServer(models=[QWEN]) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        found = started(router, interval=0.01)
        for _ in range(3):      # each pass of the loop sets it again once its probe is over
            assert found.probed.wait(10)
            found.probed.clear()
        found.stop()
        assert not found._thread.is_alive()
        assert fake.gets.count("/api/tags") >= 3


# ---- the config wins ------------------------------------------------------------------------------

def test_a_configured_provider_of_the_same_name_wins(started):
    mine = ProviderConfig(f"ollama/{QWEN}", "echo", label="Mine")
    alias = ProviderConfig("house", "echo", aliases=(f"ollama/{LLAMA}",))
    with FakeOllamaServer(models=[QWEN, LLAMA]) as fake:
        router = Router(settings(mine, alias), env={"OLLAMA_HOST": fake.host})
        found = probed(started(router))
        assert found.models == (QWEN, LLAMA)
        assert router.names() == [*CONFIGURED, f"ollama/{QWEN}", "house"]
        assert router.settings.providers[f"ollama/{QWEN}"] is mine
        assert isinstance(router.provider(f"ollama/{QWEN}"), EchoProvider)
        assert router.resolve(f"ollama/{LLAMA}") == "house"
        router.chat("你好", provider=f"ollama/{QWEN}")
        assert fake.requests == []


# ---- the API ---------------------------------------------------------------------------------------

def test_the_api_lists_and_serves_discovered_models():
    with FakeOllamaServer(["好的。"], models=[QWEN]) as fake:
        served = serve_router(env={"OLLAMA_HOST": fake.host})
        found = discover(served.router)
        try:
            probed(found)
            models = requests.get(f"{served.url}/v1/models", timeout=10).json()["data"]
            [entry] = [m for m in models if m["id"] == f"ollama/{QWEN}"]
            assert entry["ready"] is True
            one = requests.get(f"{served.url}/v1/models/ollama/{QWEN}", timeout=10)     # a name with a "/"
            assert one.status_code == 200 and one.json()["id"] == f"ollama/{QWEN}", one.text
            answer = requests.post(f"{served.url}/v1/chat/completions", timeout=10, json={
                "model": f"ollama/{QWEN}", "messages": [{"role": "user", "content": "你好"}], "style": "none"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "好的。"
            assert answer.json()["model"] == f"ollama/{QWEN}" and fake.requests[-1]["model"] == QWEN
        finally:
            if found is not None:
                found.stop()
            served.stop()


def test_the_probe_is_short():
    """A probe gives up on an address that does not answer within a fraction of a second."""
    assert ollama.CONNECT_TIMEOUT <= 0.5 and ollama.READ_TIMEOUT <= 5


def test_the_dropdown_shows_discovered_models_with_their_readiness(started):
    from llm.ui_handlers import provider_choices, provider_note

    port = free_port()
    with FakeOllamaServer(models=[QWEN], port=port) as fake:
        router = Router(settings(), env={"OLLAMA_HOST": fake.host})
        found = probed(started(router))
        [(label, _)] = [c for c in provider_choices(router) if c[1] == f"ollama/{QWEN}"]
        assert label.startswith(f"Ollama · {QWEN}") and label == provider_choices(router)[0][0].replace(
            PRESETS["direct"].display_name, f"Ollama · {QWEN}")     # said as "ready", as Direct Reply is
    found.refresh()     # the server has stopped
    [(label, _)] = [c for c in provider_choices(router) if c[1] == f"ollama/{QWEN}"]
    assert label != provider_choices(router)[0][0].replace(PRESETS["direct"].display_name, f"Ollama · {QWEN}")
    assert "ollama serve" in provider_note(router, f"ollama/{QWEN}")
