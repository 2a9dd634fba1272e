"""The page as a visitor meets it, in Debian's Chromium: the avatar and the input on the first screen of a
phone and a desktop, every label in the browser's language, a reply said (caption and mouth) even where
the browser has no voice, and one notice at a time, for the current choice."""

from __future__ import annotations

import pytest

from configs import PRESETS, Settings
from llm.router import Router
from tests.api_helpers import free_port
from tests.test_browser import BOT, choose, open_settings, scratch_sessions, send

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")

SCREENS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1366, "height": 768}}
ENGLISH = ("Provider", "Persona", "Speak replies", "Answer budget", "Sampling", "Send")
# Records each change of the avatar's state and caption with its time (ms), for the test to read after.
STAGE_LOG = """
window.__stage = [];
new MutationObserver(() => {
  const el = document.getElementById("avatar-stage"), cap = document.getElementById("avatar-caption");
  if (!el) return;
  const entry = [performance.now(), el.dataset.state, cap ? cap.textContent : "", el.dataset.viseme];
  const last = window.__stage[window.__stage.length - 1];
  if (!last || last[1] !== entry[1] || last[2] !== entry[2] || last[3] !== entry[3]) window.__stage.push(entry);
}).observe(document, {subtree: true, attributes: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    import webui

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hf-cache")))   # qwen-mini: not here
        providers = {name: PRESETS[name] for name in ("direct", "chatgpt", "qwen-mini")}
        router = Router(Settings(providers=providers, default="direct", sessions=scratch_sessions()), env={})
        demo = webui.build_demo(router, api_port=7999)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    **webui.launch_options())
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()
            router.close()


def visit(browser, url: str, screen: str = "desktop", locale: str = "en-US", script: str = ""):
    phone = screen == "phone"
    context = browser.new_context(viewport=SCREENS[screen], locale=locale, is_mobile=phone, has_touch=phone)
    if script:
        context.add_init_script(script)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#message textarea")
    page.wait_for_function("() => window.dhSpeech !== undefined && document.querySelector('#provider input')"
                           "?.value.includes('—')")     # the page's load (its language) has run
    return context, page


def box(page, selector: str) -> dict:
    return page.evaluate(f"""() => {{ const b = document.querySelector({selector!r}).getBoundingClientRect();
        return {{top: b.top, bottom: b.bottom, left: b.left, right: b.right}}; }}""")


def visible_words(page, words) -> set[str]:
    """Which of `words` a visitor can see: on screen, in an element that is rendered and not hidden."""
    return {w for w in words if any(e.is_visible() and _on_screen(page, e) for e in page.get_by_text(w).all())}


def _on_screen(page, element) -> bool:
    b = element.bounding_box()
    size = page.viewport_size
    return b is not None and b["x"] < size["width"] and b["x"] + b["width"] > 0


@pytest.mark.parametrize("screen", ["phone", "desktop"])
def test_the_avatar_and_the_input_are_on_the_first_screen_and_the_settings_are_put_away(browser, page_url,
                                                                                         screen):
    context, page = visit(browser, page_url, screen)
    try:
        size = page.viewport_size
        assert page.evaluate("window.scrollY") == 0
        assert page.evaluate("document.documentElement.scrollWidth") <= size["width"]    # no sideways scroll
        for selector in ("#avatar-stage", "#message textarea", "#send"):
            b = box(page, selector)
            assert 0 <= b["top"] and b["bottom"] <= size["height"] and 0 <= b["left"] and b["right"] <= size["width"], \
                (selector, b)
        assert not page.is_visible("#sampling") and not page.is_visible("#system")
        open_settings(page)
        page.wait_for_selector("#sampling", state="visible")
        page.get_by_label("Ember").check()      # the character's second colour theme
        page.wait_for_function("() => document.querySelector('#avatar-stage').dataset.theme === 'ember'")
    finally:
        context.close()


@pytest.mark.parametrize("screen", ["phone", "desktop"])
def test_the_page_speaks_the_browsers_language(browser, page_url, screen):
    context, page = visit(browser, page_url, screen, locale="zh-CN")
    try:
        open_settings(page)     # the drawer's labels too
        assert visible_words(page, ENGLISH) == set()
        assert {"模型", "朗读回答", "发送", "回答时长（秒）", "采样参数"} <= visible_words(
            page, ["模型", "朗读回答", "发送", "回答时长（秒）", "采样参数"])
        assert "已就绪" in page.inner_text("#notice")
    finally:
        context.close()
    context, page = visit(browser, page_url, screen, locale="en-US")
    try:
        open_settings(page)
        assert visible_words(page, ENGLISH) == set(ENGLISH)
        assert "is ready" in page.inner_text("#notice")
    finally:
        context.close()


def test_the_language_button_opens_gradios_own_language_menu(browser, page_url):
    context, page = visit(browser, page_url, locale="en-US")
    try:
        page.click("#dh-lang")
        page.wait_for_function("() => document.activeElement?.getAttribute('aria-label') === 'Language'")
        assert page.is_visible('[role="dialog"] input[aria-label="Language"]')
    finally:
        context.close()


def test_without_a_voice_the_avatar_still_says_the_reply_with_a_caption(browser, page_url):
    context, page = visit(browser, page_url, script=STAGE_LOG)     # headless Chromium: no voices at all
    sentence = "今天的天气很好，我们一起去公园散步吧！"      # 20 characters: about 4 s of speech
    try:
        assert page.evaluate("speechSynthesis.getVoices().length") == 0
        send(page, sentence)
        page.wait_for_function(f"() => document.querySelector('{BOT}')?.innerText === {sentence!r}")
        page.wait_for_function("() => window.__stage.some(e => e[1] === 'speaking')")
        page.wait_for_function("() => window.__stage.length && window.__stage.at(-1)[1] === 'idle' "
                               "&& window.__stage.some(e => e[1] === 'speaking')", timeout=20000)
        log = page.evaluate("window.__stage")
        speaking = [e for e in log if e[1] == "speaking"]
        assert speaking[-1][0] - speaking[0][0] >= 2000 or log[-1][0] - speaking[0][0] >= 2000
        assert {e[2] for e in speaking} == {sentence}       # the caption is the sentence while it is said
        assert {e[3] for e in speaking} >= {"open", "closed"} and len({e[3] for e in speaking}) >= 3
        assert log[-1][2] == ""     # and goes when it is said
    finally:
        context.close()


def test_one_notice_at_a_time_for_the_current_choice(browser, page_url):
    context, page = visit(browser, page_url)
    try:
        choose(page, "OpenAI ChatGPT — not ready")
        send(page, "你好")
        page.wait_for_function("() => document.querySelector('#notice').innerText.includes('Not answered')")
        choose(page, "Qwen2.5 0.5B Instruct (small) — not ready")
        send(page, "你好")
        page.wait_for_function("() => document.querySelector('#notice').innerText.includes('Not answered') "
                               "&& document.querySelector('#notice').innerText.includes('Qwen')")
        notice = page.inner_text("#notice")
        assert "ChatGPT" not in notice and "OPENAI_API_KEY" not in notice
        assert page.query_selector_all(".toast-body, [data-testid='toast-body'], .toast-wrap .toast") == []
        assert page.inner_text("#answered-by").strip() == ""     # said once, in the notice
        chat = box(page, "#chatbot")
        note = box(page, "#notice")
        assert note["bottom"] <= chat["top"] or note["right"] <= chat["left"] or note["top"] >= chat["bottom"]
    finally:
        context.close()


# A voice that says each sentence with one word boundary (at its first character), then ends.
BOUNDARY_VOICE = """
window.__nods = 0;
window.speechSynthesis.getVoices = () => [{name: "Test voice", lang: "xx-XX"}];
window.speechSynthesis.speak = (u) => {
  setTimeout(() => u.onstart && u.onstart(), 10);
  setTimeout(() => { u.onboundary && u.onboundary({charIndex: 0, name: "word"});
                     const el = document.getElementById("avatar-stage");
                     if (el.classList.contains("syllable") && el.dataset.viseme === "open") window.__nods += 1; }, 60);
  setTimeout(() => u.onend && u.onend(), 400);
};
"""


def test_where_a_voice_speaks_its_word_boundaries_lead_the_mouth(browser, page_url):
    context, page = visit(browser, page_url, script=BOUNDARY_VOICE)
    try:
        page.get_by_label("Speak replies").check()
        send(page, "Ah, hello there.")     # "A": an open mouth at the boundary on its first character
        page.wait_for_function("() => window.__nods >= 1")
    finally:
        context.close()
