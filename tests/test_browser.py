"""The real page in a real browser: Debian's chromium driven by playwright, the page served in-process.

CI setup: `apt-get install -y chromium fonts-wqy-microhei` and `pip install playwright`
(never `playwright install`: the test uses the system chromium).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest

from configs import PRESETS, ProviderConfig, SessionsConfig, Settings, load_settings
from llm.router import Router
from tests.api_helpers import free_port
from tests.conftest import CHROMIUM
from tests.fake_servers import FakeOpenAIServer, refused_url
from tests.test_knowledge import TOILETS, knowledge_folder

# The README's picture is the default page, refreshed only on purpose: make screenshot
SCREENSHOT = Path(__file__).resolve().parent.parent / "assets" / "screenshot.png"
SCREENSHOT_PHONE = SCREENSHOT.with_name("screenshot-phone.png")
SHORT_REPLY = "你好！我是数字人助手。很高兴认识你，有什么可以帮你？"
LONG_REPLY = "从前有一座山，山里有一座庙，庙里有个老和尚在给小和尚讲故事。" * 8
BOT = '#chatbot [data-testid="bot"] .message-content'
USER = '#chatbot [data-testid="user"] .message-content'
# Replaces the Web Speech API with a recorder: what the page would say, and in which language.
SPEECH_RECORDER = """
window.__spoken = []; window.__cancels = 0;
window.__states = [];   // the avatar's data-state after each recorded speech event
const __note = () => { const el = document.getElementById("avatar-stage");
                       window.__states.push(el && el.dataset.state); };
window.speechSynthesis.speak = (u) => {
  window.__spoken.push({text: u.text, lang: u.lang});
  // A voice says it: start, a word boundary, end (as Chrome's voices report them).
  setTimeout(() => { u.onstart && u.onstart(); __note(); }, 20);
  setTimeout(() => { u.onboundary && u.onboundary(); }, 80);
  setTimeout(() => { u.onend && u.onend(); __note(); }, 250);
};
window.speechSynthesis.cancel = () => { window.__cancels += 1; };
"""

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium fonts-wqy-microhei",
                allow_module_level=True)


class Site(NamedTuple):
    url: str
    slow: FakeOpenAIServer
    router: Router


def scratch_sessions() -> SessionsConfig:
    """The page's conversations in a folder of the test's own, removed at exit."""
    folder = tempfile.mkdtemp(prefix="llm-browser-sessions-")
    atexit.register(shutil.rmtree, folder, True)
    return SessionsConfig(folder=folder)


@pytest.fixture(scope="module")
def site():
    """The page on a free port: direct, a slow fake cloud provider, and one that is down."""
    import webui

    with pytest.MonkeyPatch.context() as mp, \
            FakeOpenAIServer(replies=[SHORT_REPLY, LONG_REPLY], chunk_delay=0.05) as slow:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        providers = {"direct": PRESETS["direct"], "chatgpt": PRESETS["chatgpt"],
                     "slow": ProviderConfig("slow", "openai", "fake", label="Slow Cloud", base_url=slow.base_url),
                     "down": ProviderConfig("down", "openai", "fake", label="Down Cloud",
                                            base_url=refused_url("/v1"))}
        router = Router(Settings(providers=providers, default="direct", sessions=scratch_sessions()), env={})
        port = free_port()
        demo = webui.build_demo(router, api_port=7999, api_key="do-not-show-me")
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **webui.launch_options())
        try:
            yield Site(f"http://127.0.0.1:{port}/", slow, router)
        finally:
            demo.close()
            router.close()


def open_page(browser, url: str, speech: str = SPEECH_RECORDER, locale: str = "en-US"):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale=locale)
    context.add_init_script(speech)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#message textarea")
    page.wait_for_function("() => window.dhSpeech !== undefined")
    return context, page


def open_settings(page) -> None:
    """Open the Settings drawer (closed on load: the developer's controls are out of sight)."""
    page.click("#settings .toggle-button")
    page.wait_for_function("() => { const s = document.querySelector('#settings'); const b = s.getBoundingClientRect();"
                           " return s.classList.contains('open') && b.right <= innerWidth + 1; }")


def choose(page, label: str) -> None:
    page.click("#provider input")
    page.get_by_role("option", name=label).click()


def send(page, text: str) -> None:
    page.fill("#message textarea", text)
    page.click("#send")


def bot_texts(page) -> list[str]:
    return [e.inner_text().strip() for e in page.query_selector_all(BOT)]


def watch_reply(page, index: int, until: str, timeout: float = 15) -> list[str]:
    """Every distinct text bot message `index` shows until it equals `until`."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = bot_texts(page)
        text = texts[index] if len(texts) > index else ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        if text == until:
            return seen
        time.sleep(0.02)
    raise AssertionError(f"the reply never became {until!r}; saw {seen[-3:]}")


def test_the_page_streams_stops_and_keeps_sessions_apart(site, browser, tmp_path):
    url, slow, _ = site
    context_a, a = open_page(browser, url)
    context_b = None
    try:
        # A: a slow cloud provider, full answers, speech on, a Chinese question; the reply streams in.
        choose(a, "Slow Cloud — ready")
        open_settings(a)
        a.get_by_label("Short spoken answers").uncheck()
        a.get_by_label("Speak replies").check()
        send(a, "你好，请介绍一下你自己。")
        seen = watch_reply(a, 0, until=SHORT_REPLY)
        assert any(0 < len(t) < len(SHORT_REPLY) and SHORT_REPLY.startswith(t) for t in seen), seen
        a.wait_for_function("() => document.querySelector('#answered-by').innerText.includes('Slow Cloud')")
        assert a.input_value("#provider input") == "Slow Cloud — ready"
        spoken = a.evaluate("window.__spoken")
        assert [s["text"] for s in spoken] == ["你好！", "我是数字人助手。", "很高兴认识你，有什么可以帮你？"]
        assert {s["lang"] for s in spoken} == {"zh-CN"}
        a.click("#api-panel > button")
        curl = a.inner_text("#api-curl .cm-content")
        assert ":7999/" in curl and "Bearer $LLM_API_KEY" in curl and "do-not-show-me" not in curl
        a.screenshot(path=str(tmp_path / "page.png"))

        # A: Stop a long reply mid-stream: it stops growing and the server stops sending.
        send(a, "讲一个很长的故事。")
        a.wait_for_function(f"() => (document.querySelectorAll('{BOT}')[1]?.innerText || '').length >= 5")
        a.click("#stop")
        time.sleep(0.5)
        stopped, sent = bot_texts(a)[1], slow.chunks_sent
        time.sleep(1.0)     # 20 more chunks would arrive in this time if the stream were still open
        assert bot_texts(a)[1] == stopped, "the reply kept growing after Stop"
        assert slow.chunks_sent == sent, "the server kept sending after Stop"
        assert LONG_REPLY.startswith(stopped) and len(stopped) < len(LONG_REPLY) // 3
        assert sent - len(SHORT_REPLY) < len(LONG_REPLY) // 3, sent
        assert a.inner_text("#answered-by").startswith("Stopped.")
        assert a.evaluate("window.__cancels") >= 1, "Stop should silence the speech"

        # B: a second browser session has its own provider and history.
        context_b, b = open_page(browser, url)
        assert b.input_value("#provider input") == "Direct Reply — ready"
        assert bot_texts(b) == []
        send(b, "第二个会话：你好")
        watch_reply(b, 0, until="第二个会话：你好")
        assert [e.inner_text().strip() for e in b.query_selector_all(USER)] == ["第二个会话：你好"]
        assert len(bot_texts(a)) == 2 and a.input_value("#provider input") == "Slow Cloud — ready"

        # B: a failing provider shows an error toast, not an avatar message; the question comes back.
        choose(b, "Down Cloud — ready")
        send(b, "这条会失败")
        b.get_by_text("check base_url").first.wait_for()
        b.wait_for_function("() => document.querySelector('#message textarea').value === '这条会失败'")
        assert bot_texts(b) == ["第二个会话：你好"]
        assert [e.inner_text().strip() for e in b.query_selector_all(USER)] == ["第二个会话：你好"]

        # B: a provider that is not ready says why and how to fix it as soon as it is chosen.
        choose(b, "OpenAI ChatGPT — not ready")
        b.wait_for_function("() => document.querySelector('#notice').innerText.includes('OPENAI_API_KEY')")
        assert "export OPENAI_API_KEY=" in b.inner_text("#notice")
    finally:
        for context in (context_a, context_b):
            if context is not None:
                context.close()


def test_a_new_conversation_empties_the_chat_and_silences_speech(site, browser):
    url, _, _ = site
    context, page = open_page(browser, url)
    try:
        page.get_by_label("Speak replies").check()
        send(page, "清空前的消息")
        watch_reply(page, 0, until="清空前的消息")
        # No sentence end in this reply: the end of the stream flushes it to the speaker.
        page.wait_for_function("() => window.__spoken.length === 1")
        assert page.evaluate("window.__spoken") == [{"text": "清空前的消息", "lang": "zh-CN"}]
        page.click("#new-conversation")
        page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 0")
        assert page.evaluate("window.__cancels") >= 1
    finally:
        context.close()


# A voice that begins the first sentence it is given and never gets further (a visitor stops it there).
# Its language is one the page never picks, so the page leaves the voice to the browser, as it would.
ONE_SENTENCE_VOICE = """
window.__queued = 0;
window.speechSynthesis.getVoices = () => [{name: "Test voice", lang: "xx-XX"}];
window.speechSynthesis.speak = (u) => {
  window.__queued += 1;
  if (window.__queued === 1) setTimeout(() => u.onstart && u.onstart(), 10);
};
window.speechSynthesis.cancel = () => {};
"""


def test_the_conversation_survives_a_reload_and_stop_keeps_what_the_avatar_said(site, browser):
    url, _, router = site
    context, page = open_page(browser, url, ONE_SENTENCE_VOICE)
    try:
        send(page, "我叫小明。")
        watch_reply(page, 0, until="我叫小明。")
        page.reload()
        page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 1")
        assert bot_texts(page) == ["我叫小明。"] and page.inner_text(USER).strip() == "我叫小明。"

        page.get_by_label("Speak replies").check()
        send(page, "第一句。第二句。第三句。")
        watch_reply(page, 1, until="第一句。第二句。第三句。")
        # the voice is on its first sentence; the other two wait their turn
        page.wait_for_function("() => window.__queued === 1 && window.dhSpeech.spoken() === 1")
        session = page.evaluate("localStorage.getItem('dh-session')")
        page.click("#stop")     # the avatar was on its first sentence: the conversation keeps that one
        deadline = time.monotonic() + 10
        while router.sessions.messages(session)[-1]["content"] != "第一句。" and time.monotonic() < deadline:
            time.sleep(0.02)
        kept = router.sessions.messages(session)[-1]
        assert (kept["content"], kept["cut"]) == ("第一句。", "stopped")
        page.reload()
        page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 2")
        assert bot_texts(page) == ["我叫小明。", "第一句。"]

        page.click("#new-conversation")
        page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 0")
        page.wait_for_function(f"() => localStorage.getItem('dh-session') !== '{session}'")
        page.reload()
        page.wait_for_selector("#message textarea")
        page.wait_for_function("() => window.dhSpeech !== undefined")
        assert page.query_selector_all(BOT) == [] and router.sessions.messages(session) is not None
    finally:
        context.close()


def test_a_message_sent_right_after_a_cut_reply_is_kept_and_answered(site, browser):
    url, slow, _ = site
    context, page = open_page(browser, url)
    try:
        choose(page, "Slow Cloud — ready")
        asked = len(slow.requests)
        send(page, "讲一个长故事。")
        # The reply is cut to the budget at a sentence end: send again the moment it shows.
        page.wait_for_function(f"() => (document.querySelectorAll('{BOT}')[0]?.innerText || '').endsWith('。')")
        send(page, "再讲一个。")
        page.wait_for_function(f"() => document.querySelectorAll('{USER}').length === 2", timeout=5000)
        page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 2", timeout=15000)
        users = [e.inner_text().strip() for e in page.query_selector_all(USER)]
        assert users == ["讲一个长故事。", "再讲一个。"] and len(slow.requests) - asked == 2
        assert page.input_value("#message textarea") == ""
    finally:
        context.close()


def test_the_default_page_is_what_the_readme_shows(browser, tmp_path, monkeypatch):
    """The page a new user gets from the default settings (no keys, no weights, no configs.yaml)."""
    import webui

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    router = Router(replace(load_settings(env={}), sessions=SessionsConfig(folder=str(tmp_path / "sessions"))),
                    env={})
    demo = webui.build_demo(router)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **webui.launch_options())
    try:
        for shot, viewport, locale, question in (
                (SCREENSHOT, {"width": 1366, "height": 768}, "en-US", "Hello! What can you do for visitors?"),
                (SCREENSHOT_PHONE, {"width": 390, "height": 844}, "zh-CN", "你好，请介绍一下你自己。")):
            phone = viewport["width"] < 500
            context = browser.new_context(viewport=viewport, locale=locale, is_mobile=phone, has_touch=phone)
            page = context.new_page()
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                page.wait_for_function("() => document.querySelector('#provider input')?.value.includes('—')")
                assert page.input_value("#provider input").startswith("Direct Reply")
                send(page, question)
                watch_reply(page, 0, until=question)
                # the avatar saying it (no voice here: silently), its caption under it
                page.wait_for_function("() => document.querySelector('#avatar-stage').dataset.state === 'speaking'"
                                       " && document.querySelector('#avatar-caption').textContent !== ''")
                page.evaluate("() => { document.activeElement?.blur(); window.scrollTo(0, 0); }")
                page.screenshot(path=str(shot if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / shot.name))
            finally:
                context.close()
    finally:
        demo.close()
        router.close()


def test_the_avatar_thinks_speaks_and_shows_the_emotion(site, browser):
    url, slow, _ = site
    context, page = open_page(browser, url)
    try:
        stage = "#avatar-stage"
        assert page.get_attribute(stage, "data-state") == "idle"
        assert page.is_visible(f"{stage} svg")
        page.get_by_label("Speak replies").check()
        choose(page, "Slow Cloud — ready")
        send(page, "讲个故事吧。")
        page.wait_for_function("() => document.querySelector('#avatar-stage').dataset.state === 'thinking'",
                               timeout=5000)
        # each recorded utterance: speaking on its start; idle again after the last one ends
        page.wait_for_function("() => window.__states.includes('speaking')", timeout=15000)
        page.wait_for_function("() => document.querySelector('#avatar-stage').dataset.state === 'idle'",
                               timeout=15000)
        assert page.evaluate("window.__spoken.length") >= 1
        # the router's emotion (shown on the status line) sets the face
        page.evaluate("document.querySelector('#answered-by').innerText = 'Answered by X · feeling: joy'")
        page.wait_for_function("() => document.querySelector('#avatar-stage').dataset.emotion === 'joy'")
    finally:
        context.close()


def test_no_toasts_pile_up_and_the_microphone_shows_only_where_the_browser_can_listen(site, browser):
    url, _, _ = site
    context, page = open_page(browser, url)
    try:
        for _ in range(2):
            choose(page, "OpenAI ChatGPT — not ready")
            page.wait_for_function("() => document.querySelector('#notice').innerText.includes('restart')")
            choose(page, "Direct Reply — ready")
        time.sleep(0.5)
        assert page.query_selector_all(".toast-body, [data-testid='toast-body']") == []
        assert page.is_visible("#dh-mic")       # Chromium offers webkitSpeechRecognition
    finally:
        context.close()
    context = browser.new_context()
    context.add_init_script("delete window.webkitSpeechRecognition; delete window.SpeechRecognition;")
    page = context.new_page()
    try:
        page.goto(url)
        page.wait_for_selector("#avatar-stage")
        page.wait_for_function("() => window.dhSpeech !== undefined")
        time.sleep(0.5)
        assert not page.is_visible("#dh-mic")
    finally:
        context.close()


def test_the_download_button_fetches_a_local_model_and_it_answers_without_a_restart(browser, tmp_path,
                                                                                       monkeypatch):
    """A local model that is not here: Download (from a loopback fake hub), then chat with it."""
    import webui
    from tests.fake_hub import FakeHub
    from tests.tiny_models import build_llama

    for var in ("HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    repo = build_llama(tmp_path / "tiny-chat")
    size = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    with FakeHub({"fake-org/tiny-chat": repo}, bytes_per_s=size // 3) as hub:    # about 3 s
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        providers = {"direct": PRESETS["direct"],
                     "tiny": ProviderConfig("tiny", "local", "fake-org/tiny-chat", label="Tiny Local", device="cpu",
                                            generation={"max_new_tokens": 8})}
        router = Router(Settings(providers=providers, default="direct",
                                 sessions=SessionsConfig(folder=str(tmp_path / "sessions"))), env={})
        demo = webui.build_demo(router)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **webui.launch_options())
        context, page = open_page(browser, f"http://127.0.0.1:{port}/")
        try:
            assert not page.is_visible("#download")         # Direct Reply needs nothing
            choose(page, "Tiny Local — not ready")
            page.wait_for_selector("#download", state="visible")
            page.click("#download")
            # the download's own progress (huggingface_hub's bars, tracked by Gradio) shows while it runs
            page.wait_for_function("() => [...document.querySelectorAll('.progress-level')]"
                                   ".some(e => /Fetching \\d+ files - \\d/.test(e.innerText))", timeout=10000)
            page.wait_for_function("() => document.querySelector('#notice').innerText.includes('is ready')",
                                   timeout=60000)
            page.wait_for_selector("#download", state="hidden")
            assert router.status("tiny").ready
            send(page, "你好")
            page.wait_for_function(f"() => document.querySelectorAll('{BOT}').length === 1", timeout=60000)
            page.wait_for_function("() => document.querySelector('#answered-by').innerText.includes('Tiny Local')",
                                   timeout=60000)
        finally:
            context.close()
            demo.close()
            router.close()


def test_an_faq_reply_folds_its_sources_and_the_knowledge_panel_lists_uploads_and_deletes(browser, tmp_path,
                                                                                          monkeypatch):
    """A deployment with knowledge: the FAQ answer with its sources folded under it (never said), the
    toggle that turns the knowledge off, and the panel's documents, upload, bad upload and delete."""
    import webui

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    with FakeOpenAIServer(replies=[SHORT_REPLY], chunk_delay=0.01) as cloud:
        providers = {"direct": PRESETS["direct"],
                     "cloud": ProviderConfig("cloud", "openai", "fake", label="Fake Cloud", base_url=cloud.base_url)}
        router = Router(Settings(providers=providers, default="cloud", knowledge=knowledge_folder(tmp_path / "kb"),
                                 sessions=SessionsConfig(folder=str(tmp_path / "sessions"))), env={})
        demo = webui.build_demo(router)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **webui.launch_options())
        context, page = open_page(browser, f"http://127.0.0.1:{port}/")
        try:
            open_settings(page)
            assert page.get_by_label("Answer from the knowledge").is_checked()
            page.get_by_label("Speak replies").check()
            send(page, "洗手间在哪")
            summary = page.wait_for_selector(f"{BOT} details.dh-sources > summary")
            assert summary.inner_text().strip() == "Sources (1)"
            item = page.query_selector(f"{BOT} details.dh-sources li")
            assert not item.is_visible(), "the sources start folded"
            assert bot_texts(page)[0].startswith(TOILETS)
            summary.click()
            page.wait_for_selector(f"{BOT} details.dh-sources li", state="visible")
            assert item.inner_text().strip() == "faq.csv — 洗手间在哪 (1.00)"
            page.wait_for_function("() => document.querySelector('#answered-by')?.innerText.includes('knowledge')")
            page.wait_for_function("() => window.__spoken.length === 1")
            assert page.evaluate("window.__spoken") == [{"text": TOILETS, "lang": "zh-CN"}]
            assert cloud.requests == []

            # Off: the same question goes to the model, with the earlier reply (no fold) in its history.
            page.get_by_label("Answer from the knowledge").uncheck()
            send(page, "洗手间在哪")
            watch_reply(page, 1, until=SHORT_REPLY)
            assert len(page.query_selector_all(f"{BOT} details.dh-sources")) == 1
            assert [m["content"] for m in cloud.requests[-1]["messages"] if m["role"] == "assistant"] == [TOILETS]

            # The panel: the documents, an upload, a bad upload and a delete.
            page.click("#knowledge-panel > button")
            page.wait_for_function("() => document.querySelector('#knowledge-docs')?.innerText.includes('tickets.md')")
            listed = page.inner_text("#knowledge-docs")
            assert "faq.csv" in listed and "exhibits/ocean.md" in listed and "meteorites.md" not in listed
            (tmp_path / "up").mkdir()
            good, empty = tmp_path / "up" / "meteorites.md", tmp_path / "up" / "empty.md"
            good.write_text("# 陨石展厅\n\n陨石展厅在二楼北侧，展出一块三百公斤的铁陨石。\n", encoding="utf-8")
            empty.write_bytes(b"")
            page.set_input_files("#knowledge-upload input[type=file]", [str(good)])
            page.wait_for_function("() => document.querySelector('#knowledge-notice')?.innerText"
                                   ".includes('Added meteorites.md: 1 passage.')")
            # the notice and the list are two outputs of one event: each is waited for, not assumed
            page.wait_for_function("() => document.querySelector('#knowledge-docs')?.innerText"
                                   ".includes('meteorites.md')")
            page.set_input_files("#knowledge-upload input[type=file]", [str(empty)])
            page.wait_for_function("() => document.querySelector('#knowledge-notice')?.innerText.includes('empty.md')")
            notice = page.inner_text("#knowledge-notice")
            assert "Not added: empty.md: no text in it. Fix: upload a text document in UTF-8." in notice
            assert "Traceback" not in notice and "empty.md" not in page.inner_text("#knowledge-docs")

            page.click("#knowledge-doc input")
            page.get_by_role("option", name="meteorites.md").click()
            page.click("#knowledge-delete")
            page.wait_for_function("() => document.querySelector('#knowledge-notice')?.innerText"
                                   ".includes('Deleted meteorites.md.')")
            page.wait_for_function("() => !(document.querySelector('#knowledge-docs')?.innerText ?? 'meteorites.md')"
                                   ".includes('meteorites.md')")
            assert "tickets.md" in page.inner_text("#knowledge-docs")
        finally:
            context.close()
            demo.close()
            router.close()
