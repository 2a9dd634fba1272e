"""`python -m llm`: download and status, without any network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import load_settings
from llm.__main__ import main
from llm.download import DownloadError, plan

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LLM_", "HTTP", "http")) and not k.endswith("_API_KEY")}
    return subprocess.run([sys.executable, "-m", "llm", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=environ | env)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def config(tmp_path):
    # `status` asks a live API on api_port first: give it a port that is bound but not listening, so a
    # server the developer has running on 7871 cannot answer in this config's place
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        path = tmp_path / "configs.yaml"
        path.write_text(f"""
providers:
  mine: {{kind: local, model: "{tmp_path / 'models' / 'mine'}", download: tiny-org/tiny-model}}
  folder: {{kind: local, model: "{tmp_path / 'models' / 'folder'}"}}
server: {{api_port: {closed_port.getsockname()[1]}}}
""", encoding="utf-8")
        yield path


def test_help_works():
    result = run_cli("--help")
    assert result.returncode == 0 and "download" in result.stdout and "status" in result.stdout


def test_unknown_name_lists_the_known_ones(capsys):
    assert main(["download", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown provider 'nope'" in err and "qwen" in err and "linly" in err


def test_remote_providers_need_no_download(capsys):
    assert main(["download", "chatgpt"]) == 0
    out = capsys.readouterr().out
    assert "needs no download" in out and "OPENAI_API_KEY" in out
    assert main(["download", "direct"]) == 0
    assert "needs no download" in capsys.readouterr().out


def test_no_network_fails_fast_with_a_clear_message():
    started = time.monotonic()
    result = run_cli("download", "qwen", timeout=30, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
                     HF_HUB_ETAG_TIMEOUT="2", HF_HUB_DOWNLOAD_TIMEOUT="2", HF_HUB_DISABLE_PROGRESS_BARS="1")
    assert result.returncode == 1
    assert time.monotonic() - started < 20     # most of this is importing; the failure itself is instant
    assert "cannot reach http://127.0.0.1" in result.stderr and "HF_ENDPOINT" in result.stderr
    assert "Traceback" not in result.stderr


def test_modelscope_without_the_package_says_how_to_install_it(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)    # as if not installed
    assert main(["download", "qwen", "--source", "modelscope"]) == 1
    assert "pip install modelscope" in capsys.readouterr().err


def test_a_folder_model_downloads_its_download_id_into_that_folder(config):
    settings = load_settings(config, env={})
    target = plan(settings.providers["mine"])
    assert target.repo_id == "tiny-org/tiny-model" and target.local_dir == Path(settings.providers["mine"].model)
    hub = plan(settings.providers["qwen"])
    assert hub.repo_id == "Qwen/Qwen1.5-1.8B-Chat" and hub.local_dir is None     # the HF cache
    assert plan(settings.providers["qwen"], source="modelscope").local_dir == Path("models/Qwen/Qwen1.5-1.8B-Chat")


def test_a_folder_model_without_a_hub_id_says_what_to_set(config, capsys):
    with pytest.raises(DownloadError, match="set download: <hub id> for provider folder"):
        plan(load_settings(config, env={}).providers["folder"])
    assert main(["--config", str(config), "download", "folder"]) == 1


def test_status_lists_every_provider_with_its_fix(config, capsys, monkeypatch):
    for var in ("OPENAI_API_KEY", "LLM_CONFIG", "LLM_DEFAULT_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    assert main(["--config", str(config), "status"]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert lines["direct"] == "ready"
    assert "python -m llm download mine" in lines["mine"]
    assert lines["chatgpt"].startswith("not ready: ")     # no key (or no openai package): with the fix
