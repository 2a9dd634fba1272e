"""The page's layout and wiring: the avatar at the centre, the conversation beside it (under it on a
phone), the developer's controls in a Settings drawer, every label in the browser's language.

The handlers live in ui_handlers (turns, notices), ui_session (the conversation kept on the server) and
ui_knowledge (the documents panel); the words in ui_text; the drawing, its CSS and the page's JavaScript
in assets/."""

from __future__ import annotations

import html
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from . import ui_handlers as ui
from . import ui_knowledge as kb_ui
from .router import Router
from .types import BOUNDS
from .ui_text import LABELS, i18n

ASSETS = Path(__file__).resolve().parent.parent / "assets"
AVATAR_ICON = ASSETS / "avatar.png"      # the chat's bot icon and the tab's: the character on the stage
TITLE = "数字人助手 · Digital Human Assistant"
CSS = "\n".join((ASSETS / name).read_text(encoding="utf-8") for name in ("page.css", "avatar.css")
                if (ASSETS / name).exists())
PAGE_JS = (ASSETS / "page.js").read_text(encoding="utf-8")
AVATAR_STAGE = (ASSETS / "avatar.html").read_text(encoding="utf-8")
# Cloud streams mostly wait on the network, so many overlap; the router itself queues local
# generations per model (its slot), so a busy local model never holds up these.
CHAT_CONCURRENCY = 16
DEFAULT_CONCURRENCY = 8
# The page's handlers are its own: not published as a Gradio API (the :7871 API is the one to call).
HIDDEN = "private"
# What the page's JavaScript hands each event: its language (Gradio sets <html lang>).
LANG_JS = "document.documentElement.lang || navigator.language || 'en'"
SEND_JS = ("(m, h, t, n, l) => { const s = window.dhSpeech;"
           " if (s && (m || '').trim()) { n = s.spoken(); s.stop(); s.thinking(m); }"
           f" return [m, h, t, n, {LANG_JS}]; }}")
# Send and Stop tell the server how many sentences of the last reply the browser began to say (-1: it
# showed them without a voice), then silence it: the conversation keeps what was heard.
STOP_JS = (f"(t, n, l) => {{ const s = window.dhSpeech; n = s ? s.spoken() : -1; s && s.stop();"
           f" return [t, n, {LANG_JS}]; }}")
STOP_SPEAKING_JS = "(...args) => { window.dhSpeech && window.dhSpeech.stop(); return args; }"
# The conversation's id lives in the browser (localStorage): a reload finds the conversation again.
SESSION_KEY = "dh-session"
LOAD_JS = (f"(id, p, l) => {{ let s = ''; try {{ s = localStorage.getItem('{SESSION_KEY}') || ''; }}"
           f" catch (e) {{}} return [s, p, {LANG_JS}]; }}")
SAVE_SESSION_JS = (f"(id) => {{ try {{ localStorage.setItem('{SESSION_KEY}', id); }} catch (e) {{}}"
                   " return [id]; }")
WITH_LANG_JS = f"(...args) => {{ args[args.length - 1] = {LANG_JS}; return args; }}"


def build_demo(router: Router, api_port: int = 7871, api_key: str | None = None, *,
               api_host: str = "127.0.0.1") -> gr.Blocks:
    """The page. Everything a user changes lives in that browser session's component values."""
    t = i18n()
    with gr.Blocks(title=TITLE) as demo:
        with gr.Sidebar(open=False, position="right", label=t("settings"), elem_id="settings"):
            settings = _settings_drawer(router, api_port, api_key, api_host, t)
            settings.update(_knowledge_panel(router, t))
        with gr.Row(elem_id="dh-header"):
            gr.HTML(_header(api_port, api_host), elem_id="dh-header-html")
        with gr.Row(elem_id="dh-main"):
            with gr.Column(scale=2, min_width=300, elem_id="dh-stage-col"):
                gr.HTML(AVATAR_STAGE, elem_id="avatar-panel")   # the digital human: assets/avatar.html
                page = _at_hand(router, t)
            with gr.Column(scale=3, min_width=300, elem_id="dh-chat-col"):
                page.update(_chat_panel(t))
        page.update(settings)
        page["turn"] = gr.State(None)   # this browser's running Turn (a CancelToken)
        c = SimpleNamespace(**page)
        _wire_chat(demo, router, c)
        _wire_settings(demo, router, c, api_port, api_key, api_host)
        if "documents" in page:
            _wire_knowledge(demo, router, c)
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def launch_options() -> dict:
    """Theme, CSS, favicon, the language switch and the labels' translations: Gradio 6 takes these at
    launch(), not in Blocks(). The footer keeps Gradio's settings (its own language menu too), not its
    "Use via API" panel: the page's handlers are private, and the API is the one on its own port."""
    # The system's monospace font: the bundled one lacks glyphs (braces) in some browsers.
    theme = gr.themes.Soft(font_mono=("ui-monospace", "Menlo", "Consolas", "monospace"))
    return {"theme": theme, "css": CSS, "favicon_path": str(AVATAR_ICON), "i18n": i18n(),
            "footer_links": ["gradio", "settings"]}


def _header(api_port: int, api_host: str) -> str:
    """The title in both languages (CSS shows the page's), the language switch and the real API's docs."""
    host = ("127.0.0.1" if api_host in ("0.0.0.0", "::", "")
            else f"[{api_host}]" if ":" in api_host else api_host)
    docs = f"http://{html.escape(host)}:{api_port}/docs"
    return (f'<div class="dh-header"><h1><span lang="zh">{LABELS["zh"]["title"]}</span>'
            f'<span lang="en">{LABELS["en"]["title"]}</span></h1><nav>'
            f'<button id="dh-lang" type="button" title="中文 / English">中文 / EN</button>'
            f'<a id="dh-api-docs" href="{docs}" target="_blank" rel="noopener">API</a></nav></div>')


def _at_hand(router: Router, t) -> dict:
    """Under the avatar: the provider, speaking on or off, the one notice, and Download when it applies."""
    names = router.names()
    default = router.settings.default if router.settings.default in names else names[0]
    with gr.Row(elem_id="dh-at-hand"):
        provider = gr.Dropdown(ui.provider_choices(router), value=default, label=t("provider"),
                               elem_id="provider", scale=3, min_width=160)
        speak = gr.Checkbox(False, label=t("speak"), elem_id="speak", scale=1, min_width=100)
    notice = gr.Markdown(ui.provider_note(router, default), elem_id="notice")
    with gr.Row(elem_id="dh-download"):
        fetch = gr.Button(t("download"), visible=ui.can_download(router, default), elem_id="download",
                          variant="secondary", size="sm")
        other = gr.Button("", visible=False, elem_id="download-other", size="sm")
    lang = gr.Textbox("en", visible=False, elem_id="lang")      # the page's language, set by LANG_JS
    return dict(provider=provider, speak=speak, note=notice, fetch=fetch, fetch_other=other, lang=lang)


def _chat_panel(t) -> dict:
    """The conversation, its status line and the input row (pinned at the bottom on a phone)."""
    chatbot = gr.Chatbot(label=t("chat"), height=430, avatar_images=(None, str(AVATAR_ICON)),
                         elem_id="chatbot",
                         buttons=["copy"], feedback_options=None, placeholder=t("greeting"),
                         examples=[{"text": text} for text in ui.EXAMPLES])
    answered = gr.Markdown("", elem_id="answered-by")
    sayings = gr.HTML(ui.Sayings.NONE, elem_id="sayings")   # what the avatar says (hidden; page.js reads it)
    session = gr.Textbox("", visible=False, elem_id="session-id")    # the conversation's id (SESSION_KEY)
    spoken = gr.Number(-1, visible=False, elem_id="spoken")     # set by SEND_JS / STOP_JS
    with gr.Row(elem_id="dh-input"):
        msg = gr.Textbox(placeholder=t("message"), show_label=False, scale=5, lines=1, max_lines=4,
                         elem_id="message", min_width=120)
        send = gr.Button(t("send"), variant="primary", scale=0, min_width=64, elem_id="send")
        stop = gr.Button(t("stop"), variant="stop", scale=0, min_width=64, elem_id="stop")
        new = gr.Button(t("new"), scale=0, min_width=64, elem_id="new-conversation")
    return dict(chatbot=chatbot, answered=answered, sayings=sayings, msg=msg, send=send, stop=stop,
                new=new, session=session, spoken=spoken)


def _settings_drawer(router: Router, api_port: int, api_key: str | None, api_host: str, t) -> dict:
    """The developer's controls, in the closed drawer: persona, style, budget, sampling, the API."""
    names, style = router.names(), router.settings.style
    default = router.settings.default if router.settings.default in names else names[0]
    persona = gr.Dropdown([label for label, _ in ui.PERSONAS], value=ui.PERSONAS[0][0], label=t("persona"))
    system = gr.Textbox(ui.PERSONAS[0][1], label=t("system"), lines=3, elem_id="system")
    styled = gr.Checkbox(style.short_answer, label=t("short"))
    # Off: the turn is answered without the knowledge. Shown only where `knowledge:` is configured.
    knowledge = gr.Checkbox(True, label=t("knowledge"), visible=kb_ui.knowledge_on(router),
                            elem_id="use-knowledge")
    budget = gr.Slider(1, 30, value=style.max_seconds, step=0.5, label=t("budget"), elem_id="budget")
    theme = gr.Radio([("Aurora", "aurora"), ("Ember", "ember")], value="aurora", label=t("theme"),
                     elem_id="dh-theme")
    temperature0, top_p0, tokens0 = ui.sampling_defaults(router, default)
    with gr.Accordion(t("sampling"), open=False, elem_id="sampling"):
        temperature = gr.Slider(*BOUNDS["temperature"][:2], value=temperature0, step=0.05,
                                label=t("temperature"))
        top_p = gr.Slider(0.05, BOUNDS["top_p"][1], value=top_p0, step=0.01, label=t("top_p"))
        max_new = gr.Slider(1, 4096, value=tokens0, step=1, label=t("max_new"))
    with gr.Accordion(t("api"), open=False, elem_id="api-panel"):
        curl = gr.Code(ui.api_curl(api_port, api_key, default, api_host), language="shell",
                       label=f"POST :{api_port}/", interactive=False, wrap_lines=True, elem_id="api-curl")
    return dict(persona=persona, system=system, styled=styled, knowledge=knowledge, budget=budget,
                theme=theme,                 temperature=temperature, top_p=top_p, max_new=max_new, curl=curl)


def _knowledge_panel(router: Router, t) -> dict:
    """The knowledge's documents, an upload and a delete: only where `knowledge:` is configured. It is
    part of the page, so behind the page's login like the rest."""
    if not kb_ui.knowledge_on(router):
        return {}
    with gr.Accordion(t("kb"), open=False, elem_id="knowledge-panel"):
        documents = gr.HTML(kb_ui.Documents.LOADING, elem_id="knowledge-docs")
        upload = gr.File(label=t("kb_add"), file_count="multiple", file_types=list(kb_ui.UPLOAD_TYPES),
                         elem_id="knowledge-upload")
        doomed = gr.Dropdown([], value=None, label=t("kb_doc"), elem_id="knowledge-doc")
        delete = gr.Button(t("kb_delete"), variant="stop", elem_id="knowledge-delete")
        notice = gr.HTML("", elem_id="knowledge-notice")
    return dict(documents=documents, upload=upload, doomed=doomed, delete=delete, knowledge_notice=notice)


def _wire_chat(demo: gr.Blocks, router: Router, c: SimpleNamespace) -> None:
    """Send/Enter, streaming, Stop, New conversation, the notice after a turn, the conversation on load."""
    async def respond(history, name, system, short, budget, temperature, top_p, max_new, knowledge, turn,
                      session, lang, progress=gr.Progress()):
        opts = ui.TurnOptions(name, system, short, budget, temperature, top_p, max_new, knowledge, session,
                              lang)
        async for update in ui.respond(router, history, opts, turn, progress):
            yield update

    def start(message, history, turn, spoken, lang):
        return ui.start_turn(message, history, turn, router=router, spoken=spoken)

    inputs = [c.chatbot, c.provider, c.system, c.styled, c.budget, c.temperature, c.top_p, c.max_new,
              c.knowledge, c.turn, c.session, c.lang]
    # trigger_mode="multiple": a message sent while the last turn is still finishing must start its own
    # turn ("once", the default, silently dropped it); start_turn retires the old turn first.
    started = gr.on([c.send.click, c.msg.submit], start, [c.msg, c.chatbot, c.turn, c.spoken, c.lang],
                    [c.msg, c.chatbot, c.turn], api_visibility=HIDDEN, concurrency_limit=None,
                    show_progress="hidden", trigger_mode="multiple", js=SEND_JS)
    streaming = started.then(respond, inputs, [c.chatbot, c.answered, c.msg, c.sayings],
                             trigger_mode="multiple", api_visibility=HIDDEN,
                             concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat")
    streaming.then(lambda turn, name, lang: ui.report(turn, router, name, lang), [c.turn, c.provider, c.lang],
                   [c.note], api_visibility=HIDDEN, concurrency_limit=None, trigger_mode="multiple",
                   js="(t, p, l) => { window.dhSpeech && window.dhSpeech.flush(); return [t, p, l]; }")
    # An example in the empty chat: into the box, then sent as typed.
    def example(evt: gr.SelectData) -> str:
        return evt.value["text"]

    c.chatbot.example_select(example, None, [c.msg], api_visibility=HIDDEN, concurrency_limit=None
                             ).then(None, js="() => document.getElementById('send').click()")
    # No cancels= here: the turn's token ends the stream itself, so its last update (the partial
    # reply and "Stopped.") is the last word; a cancelled event's late update could overwrite it.
    c.stop.click(lambda turn, spoken, lang: ui.stop(turn, router, spoken, lang), [c.turn, c.spoken, c.lang],
                 [c.answered], api_visibility=HIDDEN, concurrency_limit=None, js=STOP_JS)
    # New conversation, and the chat's own trash icon: stop the turn and the speech, empty the chat, and
    # keep the new conversation's id in the browser.
    gr.on([c.new.click, c.chatbot.clear], ui.new_conversation, [c.turn],
          [c.chatbot, c.answered, c.sayings, c.turn, c.session], api_visibility=HIDDEN,
          concurrency_limit=None, js=STOP_SPEAKING_JS).then(None, [c.session], None, js=SAVE_SESSION_JS)
    c.speak.change(None, [c.speak], None, js="(on) => { window.dhSpeech && window.dhSpeech.enable(on); }")
    c.theme.change(None, [c.theme], None, js="(v) => { const s = document.getElementById('avatar-stage');"
                                             " if (s) s.dataset.theme = v; }")
    demo.load(None, js=PAGE_JS)

    def opened(session, name, lang):
        chat, session, status = ui.open_conversation(router, session, lang)
        return (chat, session, status, lang, gr.update(choices=ui.provider_choices(router, lang)),
                ui.provider_note(router, name, lang), gr.update(visible=ui.can_download(router, name)))

    # Readiness can change while the server runs (a model downloaded): read it again per page load.
    demo.load(opened, [c.session, c.provider, c.lang],
              [c.chatbot, c.session, c.answered, c.lang, c.provider, c.note, c.fetch],
              api_visibility=HIDDEN, concurrency_limit=None, js=LOAD_JS
              ).then(None, [c.session], None, js=SAVE_SESSION_JS)


def _wire_settings(demo: gr.Blocks, router: Router, c: SimpleNamespace, api_port: int,
                   api_key: str | None, api_host: str) -> None:
    """Provider choice (the notice, sampling defaults, curl, Download), persona presets, Download."""
    c.provider.select(lambda name, lang: ui.choose_provider(router, name, lang), [c.provider, c.lang],
                      [c.note, c.temperature, c.top_p, c.max_new], api_visibility=HIDDEN,
                      concurrency_limit=None, js=WITH_LANG_JS)
    c.provider.change(lambda name: ui.api_curl(api_port, api_key, name, api_host), [c.provider], [c.curl],
                      api_visibility=HIDDEN, concurrency_limit=None)
    c.provider.change(lambda name: (gr.update(visible=ui.can_download(router, name)),
                                    gr.update(visible=False)),
                      [c.provider], [c.fetch, c.fetch_other], api_visibility=HIDDEN, concurrency_limit=None)

    async def fetch(name, lang, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="Downloading… 正在下载")
        return await ui.download_model(router, name, lang)

    async def fetch_other(name, lang, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="Downloading… 正在下载")
        return await ui.download_model(router, name, lang, other=True)

    outputs = [c.note, c.provider, c.fetch, c.fetch_other]
    c.fetch.click(fetch, [c.provider, c.lang], outputs, api_visibility=HIDDEN, concurrency_limit=2,
                  js=WITH_LANG_JS)
    c.fetch_other.click(fetch_other, [c.provider, c.lang], outputs, api_visibility=HIDDEN,
                        concurrency_limit=2, js=WITH_LANG_JS)
    c.persona.select(lambda label: dict(ui.PERSONAS)[label], [c.persona], [c.system], api_visibility=HIDDEN,
                     concurrency_limit=None)


def _wire_knowledge(demo: gr.Blocks, router: Router, c: SimpleNamespace) -> None:
    """The knowledge panel: listed on each page load, refreshed after an upload or a delete."""
    async def list_documents():
        return await kb_ui.list_documents(router)

    async def upload(files):
        return await kb_ui.upload_documents(router, files)

    async def delete(name):
        return await kb_ui.delete_document(router, name)

    demo.load(list_documents, None, [c.documents, c.doomed], api_visibility=HIDDEN, concurrency_limit=None)
    c.upload.upload(upload, [c.upload], [c.knowledge_notice, c.documents, c.doomed, c.upload],
                    api_visibility=HIDDEN, concurrency_limit=2, concurrency_id="knowledge")
    c.delete.click(delete, [c.doomed], [c.knowledge_notice, c.documents, c.doomed], api_visibility=HIDDEN,
                   concurrency_limit=2, concurrency_id="knowledge")
