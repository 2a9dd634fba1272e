"""`python -m llm download` end to end against a loopback Hugging Face hub (tests/fake_hub.py).

HF_ENDPOINT and HF_HUB_CACHE are set after huggingface_hub was imported, as a long-running process
would: llm.download.hub_location() must read them at call time. Nothing leaves 127.0.0.1 and the
user's own HF cache and token are never used.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import load_settings
from llm.__main__ import main
from llm.download import hub_location
from llm.router import Router
from tests.fake_hub import FakeHub
from tests.tiny_models import build_llama

REPO = "fake-org/tiny-chat"
TOKEN = "hf_fake_token_for_tests"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return build_llama(tmp_path_factory.mktemp("hub") / "tiny-chat")


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """A private HF cache and home, a fake token, no proxies; returns the cache folder."""
    for var in ("HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "LLM_CONFIG", "LLM_DEFAULT_PROVIDER",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return tmp_path / "hf-cache"


def config(tmp_path: Path, model: str = REPO) -> str:
    path = tmp_path / "configs.yaml"
    path.write_text(f"providers:\n  tiny: {{kind: local, model: {model}, device: cpu}}\n", encoding="utf-8")
    return str(path)


def served(hub: FakeHub, method: str, server: str = "hub") -> list[str]:
    return [r["path"] for r in hub.requests if r["method"] == method and r["server"] == server]


def test_hub_location_reads_the_environment_at_call_time(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for var in ("HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert hub_location() == (constants.ENDPOINT, constants.HF_HUB_CACHE)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_location() == ("http://127.0.0.1:9", str(tmp_path / "home" / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_location()[1] == str(tmp_path / "cache")


def test_download_fetches_the_repo_into_the_cache_and_the_router_answers(tiny_repo, hub_env, tmp_path,
                                                                          monkeypatch, capsys):
    cfg = config(tmp_path)
    router = Router(load_settings(cfg, env={}))
    assert not router.status("tiny").ready
    with FakeHub({REPO: tiny_repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main(["--config", cfg, "download", "tiny"]) == 0
    files, commit = hub.repos[REPO], hub.commits[REPO]
    snapshot = hub_env / "models--fake-org--tiny-chat" / "snapshots" / commit
    assert f"downloaded {REPO} to {snapshot}" in capsys.readouterr().out
    for name, f in files.items():
        assert (snapshot / name).read_bytes() == f.local.read_bytes()
    assert hub.bytes_served == sum(f.size for f in files.values())     # each file exactly once
    assert served(hub, "GET")[:3] == [f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main",
                                      f"/api/models/{REPO}/tree/{commit}?recursive=true&expand=false"]
    assert sorted(path.rsplit("/", 1)[1] for path in served(hub, "HEAD")) == sorted(files)
    assert served(hub, "GET", "cdn") == [f"/blobs/{files['model.safetensors'].sha256}?name=model.safetensors"]
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in hub.requests if r["server"] == "hub")
    assert not any("authorization" in r["headers"] for r in hub.requests if r["server"] == "cdn")

    assert router.status("tiny").ready and Router(load_settings(cfg, env={})).status("tiny").ready
    reply = router.chat("hi", provider="tiny", style=False, params={"max_new_tokens": 5})
    assert reply.provider == "tiny" and reply.text.strip()
    router.close()


def test_a_cut_download_resumes_with_range_and_a_second_one_fetches_nothing(tiny_repo, hub_env, tmp_path,
                                                                            monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 256)  # else bytes short of a 10 MB chunk are dropped
    cfg = config(tmp_path)
    with FakeHub({REPO: tiny_repo}, faults=["cut:1024", "ok"], fault_paths="/blobs/") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main(["--config", cfg, "download", "tiny"]) == 0     # after one retry, a second later
        assert [r["headers"].get("range") for r in hub.requests if r["server"] == "cdn"] == [None, "bytes=1024-"]
        snapshot = hub_env / "models--fake-org--tiny-chat" / "snapshots" / hub.commits[REPO]
        blob = "model.safetensors"
        assert (snapshot / blob).read_bytes() == (tiny_repo / blob).read_bytes()
        assert hub.bytes_served == sum(f.size for f in hub.repos[REPO].values())    # nothing sent twice

        hub.requests.clear()
        assert main(["--config", cfg, "download", "tiny"]) == 0     # all cached: two API calls, no files
        assert [r["path"] for r in hub.requests] == [f"/api/models/{REPO}", f"/api/models/{REPO}/revision/main"]
    assert "Trying to resume download" in caplog.text


def test_an_unknown_repo_names_the_repo_and_the_endpoint(tiny_repo, hub_env, tmp_path, monkeypatch, capsys):
    with FakeHub({REPO: tiny_repo}) as hub:
        endpoint = hub.endpoint
        monkeypatch.setenv("HF_ENDPOINT", endpoint + "/")     # the trailing slash is dropped
        assert main(["--config", config(tmp_path, "fake-org/no-such-model"), "download", "tiny"]) == 1
    err = capsys.readouterr().err
    assert f"error: fake-org/no-such-model does not exist on {endpoint} " in err
    assert "Traceback" not in err and hub.bytes_served == 0 and not hub_env.exists()


@pytest.mark.parametrize("fault, words", [
    ("status:503", "answered with an error for fake-org/tiny-chat: Server error '503 Service Unavailable'"),
    ("close", "cannot reach http://127.0.0.1"),
])
def test_a_failing_hub_exits_1_with_a_clear_message(tiny_repo, hub_env, tmp_path, monkeypatch, capsys,
                                                   fault, words):
    with FakeHub({REPO: tiny_repo}, faults=[fault]) as hub:
        endpoint = hub.endpoint
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        assert main(["--config", config(tmp_path), "download", "tiny"]) == 1
    err = capsys.readouterr().err
    assert words in err and endpoint in err and "Traceback" not in err
    assert len(hub.requests) == 1 and hub.bytes_served == 0 and not hub_env.exists()


def test_the_page_offers_the_other_hub_when_a_download_fails_and_it_works_without_a_restart(
        tiny_repo, hub_env, tmp_path, monkeypatch):
    import asyncio

    import gradio as gr

    from llm import ui_handlers as ui
    from tests.fake_servers import refused_url

    cfg = config(tmp_path)
    router = Router(load_settings(cfg, env={}))
    monkeypatch.setenv("HF_ENDPOINT", refused_url())
    with FakeHub({REPO: tiny_repo}) as hub:
        monkeypatch.setenv("HF_MIRROR", hub.endpoint)     # a company's own mirror
        note, _, retry, other = asyncio.run(ui.download_model(router, "tiny", "en"))
        assert "the download did not finish" in note and "cannot reach" in note
        assert f"HF_ENDPOINT={hub.endpoint} python -m llm download tiny" in note     # the commands, to copy
        assert "--source modelscope" in note
        assert retry == gr.update(visible=True)
        assert other["visible"] and other["value"].endswith(hub.endpoint.split("://", 1)[1])
        note, choices, retry, other = asyncio.run(ui.download_model(router, "tiny", "en", other=True))
    assert note == "**tiny** is ready; the model loads on the first message (progress is shown)."
    assert ("tiny — ready", "tiny") in choices["choices"] and not retry["visible"] and not other["visible"]
    assert router.status("tiny").ready
    router.close()


def test_a_gguf_model_downloads_only_its_quantization_and_is_ready(hub_env, tmp_path, monkeypatch, capsys):
    from tests.tiny_gguf import build_gguf

    repo = tmp_path / "tiny-GGUF"
    repo.mkdir()
    for quant in ("q4_k_m", "q8_0"):
        build_gguf(repo / f"tiny-{quant}.gguf")
    (repo / "README.md").write_text("two quantizations of one tiny model\n")
    cfg = tmp_path / "configs.yaml"
    cfg.write_text("providers:\n  tiny: {kind: gguf, model: fake-org/tiny-GGUF, quantization: Q4_K_M}\n")
    router = Router(load_settings(str(cfg), env={}))
    status = router.status("tiny")
    assert not status.ready and "python -m llm download tiny" in status.fix
    with FakeHub({"fake-org/tiny-GGUF": repo}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main(["--config", str(cfg), "download", "tiny"]) == 0
    fetched = {r["path"].rsplit("/", 1)[-1] for r in hub.requests if r["server"] == "cdn"} | {
        r["path"].rsplit("/", 1)[-1] for r in hub.requests if r["method"] == "HEAD"}
    assert "tiny-q4_k_m.gguf" in fetched and "tiny-q8_0.gguf" not in fetched     # the one asked for only
    assert router.status("tiny").ready
    router.close()
