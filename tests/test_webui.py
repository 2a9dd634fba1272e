"""webui.py as a user meets it: the page (knowledge panel included) locked like the API, its handlers
unpublished, busy ports."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import webui
from configs import PRESETS, SessionsConfig, Settings
from llm.router import Router
from tests.api_helpers import free_port
from tests.test_knowledge import knowledge_folder

ROOT = Path(__file__).resolve().parents[1]
KEY = "page-Key-5f1c"


@pytest.fixture(scope="module")
def locked_page(monkeypatch_module, tmp_path_factory):
    """The page with a knowledge (its documents panel and upload) behind the login."""
    monkeypatch_module.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    router = Router(Settings(providers={"direct": PRESETS["direct"]}, default="direct",
                             knowledge=knowledge_folder(tmp_path_factory.mktemp("kb")),
                             sessions=SessionsConfig(folder=str(tmp_path_factory.mktemp("sessions")))), env={})
    port = free_port()
    demo = webui.build_demo(router, api_port=7999, api_key=KEY)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=webui.page_login(KEY, env={}), **webui.launch_options())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()
        router.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.parametrize("method, path", [("get", "/config"), ("get", "/gradio_api/info"),
                                          ("get", "/gradio_api/openapi.json"),
                                          ("post", "/gradio_api/queue/join"),
                                          ("post", "/gradio_api/upload")])
def test_the_page_and_its_gradio_endpoints_refuse_a_caller_without_the_login(locked_page, method, path):
    body = {"data": ["hi", []], "fn_index": 0, "session_hash": "x"}
    reply = requests.request(method, locked_page + path, json=body if method == "post" else None, timeout=10)
    assert reply.status_code == 401, reply.text


def test_with_the_login_the_page_works_and_publishes_no_handlers(locked_page):
    session = requests.Session()
    assert session.post(f"{locked_page}/login", data={"username": "me", "password": KEY[:-1]},
                        timeout=10).status_code == 400
    assert session.post(f"{locked_page}/login", data={"username": "me", "password": KEY},
                        timeout=10).status_code == 200
    config = session.get(f"{locked_page}/config", timeout=10)
    assert config.status_code == 200
    ids = {c.get("props", {}).get("elem_id") for c in config.json()["components"]}
    assert {"knowledge-panel", "knowledge-upload", "knowledge-delete"} <= ids
    info = session.get(f"{locked_page}/gradio_api/info", timeout=10).json()
    assert info["named_endpoints"] == {} and info["unnamed_endpoints"] == {}   # start_turn, upload & co: private


def test_the_page_password_is_the_ui_password_else_the_api_key():
    assert webui.page_login(None, env={}) is None                  # open: allowed on loopback only
    login = webui.page_login(KEY, env={})
    assert login("anyone", KEY) and not login("anyone", KEY + "x") and not login("anyone", "")
    login = webui.page_login(KEY, env={"LLM_UI_PASSWORD": "ui-pass"})
    assert login("anyone", "ui-pass") and not login("anyone", KEY)


@pytest.mark.parametrize("flag", ["--port", "--api-port"])
def test_a_busy_port_exits_at_once_with_one_line_naming_the_flag(flag, tmp_path):
    config = tmp_path / "configs.yaml"
    config.write_text("default: direct\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        ports = {"--port": free_port(), "--api-port": free_port(), flag: busy.getsockname()[1]}
        start = time.monotonic()
        done = subprocess.run([sys.executable, "webui.py", "--port", str(ports["--port"]),
                               "--api-port", str(ports["--api-port"])], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "LLM_CONFIG": str(config)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and str(ports[flag]) in lines[0]
    assert time.monotonic() - start < 30 and "Traceback" not in done.stderr


def test_the_starting_page_holds_the_port_with_a_503_that_reloads_then_lets_go():
    port = free_port()
    starting = webui.Starting("127.0.0.1", port)
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/any/path", timeout=5)
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
        assert "http-equiv=refresh" in reply.text and "starting" in reply.text
        assert requests.head(f"http://127.0.0.1:{port}/", timeout=5).status_code == 503
        assert webui.port_in_use("127.0.0.1", port)
    finally:
        starting.close()
    assert webui.port_in_use("127.0.0.1", port) is None     # free for Gradio at once


def test_a_browser_opened_early_sees_the_starting_page_then_the_real_one(tmp_path):
    config = tmp_path / "configs.yaml"
    config.write_text("default: direct\n")
    ui, api = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "webui.py", "--port", str(ui), "--api-port", str(api)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={"PATH": "/usr/bin:/bin", "LLM_CONFIG": str(config),
                                 "GRADIO_ANALYTICS_ENABLED": "False"})
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while (not seen or seen[-1] != 200) and time.monotonic() < deadline and proc.poll() is None:
            try:
                seen.append(requests.get(f"http://127.0.0.1:{ui}/", timeout=5).status_code)
            except requests.ConnectionError:
                pass    # not bound yet, or the moment Gradio takes the port over
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert seen and seen[0] == 503 and seen[-1] == 200, seen[:3] + seen[-3:]
    assert set(seen) == {503, 200}
