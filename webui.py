"""The digital-human assistant: the Gradio page, with the :7871 API started beside it.

python webui.py               UI on 127.0.0.1:7860 and API on 127.0.0.1:7871 (one router, one set of models)
python webui.py --api-only    the API alone, for a GPU box without a browser
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from configs import load_settings
from llm.errors import ConfigError
from llm.router import Router
from llm.types import BOUNDS

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("webui")
TITLE = "Digital Human Assistant 数字人助手"
AVATAR = Path(__file__).resolve().parent / "assets" / "avatar.png"   # the chat's and the tab's icon
# Cloud streams mostly wait on the network, so many overlap; the router itself queues local
# generations per model (its slot), so a busy local model never holds up these.
CHAT_CONCURRENCY = 16
# The page's handlers are its own: not published as a Gradio API (the :7871 API is the one to call).
HIDDEN = "private"
DEFAULT_CONCURRENCY = 8
ASSETS = Path(__file__).resolve().parent / "assets"
# The page's own CSS and JavaScript live in assets/, beside the avatar drawing they animate.
CSS = (ASSETS / "page.css").read_text(encoding="utf-8")
PAGE_JS = (ASSETS / "page.js").read_text(encoding="utf-8")
AVATAR_STAGE = (ASSETS / "avatar.html").read_text(encoding="utf-8")
# Send and Stop tell the server how many sentences of the last reply the browser began to say (-1: it
# showed them without a voice), then silence it: the conversation keeps what was heard.
SEND_JS = ("(m, h, t, n) => { const s = window.dhSpeech;"
           " if (s && (m || '').trim()) { n = s.spoken(); s.stop(); s.thinking(m); } return [m, h, t, n]; }")
STOP_JS = "(t, n) => { const s = window.dhSpeech; n = s ? s.spoken() : -1; s && s.stop(); return [t, n]; }"
STOP_SPEAKING_JS = "(...args) => { window.dhSpeech && window.dhSpeech.stop(); return args; }"
# The conversation's id lives in the browser (localStorage): a reload finds the conversation again.
SESSION_KEY = "dh-session"
READ_SESSION_JS = (f"(id) => {{ try {{ return [localStorage.getItem('{SESSION_KEY}') || '']; }}"
                   " catch (e) { return ['']; } }")
SAVE_SESSION_JS = (f"(id) => {{ try {{ localStorage.setItem('{SESSION_KEY}', id); }} catch (e) {{}}"
                   " return [id]; }")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help="YAML settings file (default: ./configs.yaml if present)")
    p.add_argument("--host", help="address to bind, UI and API (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="UI port (default 7860)")
    p.add_argument("--api-port", type=int, help="API port (default 7871)")
    p.add_argument("--api-only", action="store_true", help="run the API server alone, no UI")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on the API (default: $LLM_API_KEY)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without an API key")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from llm import api

    host = args.host or settings.server.host
    api_key = args.api_key or os.environ.get("LLM_API_KEY") or None
    problem = api.check_bind_security(host, api_key, args.insecure)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    router = Router(settings)
    app = api.create_app(router, api_key=api_key, max_body_bytes=settings.server.max_body_bytes)
    api_port = args.api_port or settings.server.api_port
    ui_port = args.port or settings.server.port
    ports = [("--api-port", api_port)] + ([] if args.api_only else [("--port", ui_port)])
    for flag, port in ports:
        busy = port_in_use(host, port)
        if busy:
            print(f"error: port {port} on {host} is in use ({busy}): choose another with {flag}",
                  file=sys.stderr)
            return 2
    if args.api_only:
        api.serve(app, host, api_port)
        return 0
    starting = Starting(host, ui_port)    # the page's port answers while Gradio imports (seconds)
    server = api.start_in_thread(app, host, api_port)
    try:
        launch_ui(router, host, ui_port, api_port, api_key, starting)
    finally:
        starting.close()
        server.stop()
        router.close()
    return 0


class Starting:
    """Holds the page's port while Gradio loads (`import gradio` alone takes seconds): every GET gets a
    503 with Retry-After and a page that says so and reloads itself, so a browser opened early lands
    on the real page instead of "connection refused". Closed just before Gradio binds the port."""

    PAGE = ("<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=1>"
            "<title>Starting…</title><p style='font:20px sans-serif;margin:3em;text-align:center'>"
            "The digital human is starting… this page reloads by itself.</p>").encode()

    def __init__(self, host: str, port: int):
        import http.server
        import threading

        from llm import api

        page = self.PAGE

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(503)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            do_HEAD = do_GET

            def log_message(self, *args) -> None:
                """Quiet: the console is for the real server's lines."""

        class Server(http.server.ThreadingHTTPServer):
            address_family = api.socket_family(host)
            daemon_threads = True

        self.server = Server((host.strip("[]"), port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="page-starting", daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()


def port_in_use(host: str, port: int) -> str | None:
    """Why `port` cannot be bound on `host` (e.g. "Address already in use"), or None when it is free."""
    from llm import api

    try:
        api.bind(host, port).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


def page_login(api_key: str | None, env=os.environ):
    """Gradio's auth for the page: locked like the API. With $LLM_UI_PASSWORD, or else the API key,
    the page asks for a login (any user name, that password); with neither, it is open (which the
    bind check allows on loopback only, or with --insecure)."""
    import hmac

    secret = env.get("LLM_UI_PASSWORD") or api_key
    if not secret:
        return None
    return lambda _user, password: hmac.compare_digest(str(password).encode(), secret.encode())


def launch_ui(router: Router, host: str, port: int, api_port: int, api_key: str | None,
              starting: Starting | None = None) -> None:
    """Build and serve the Gradio page (blocking); `starting` hands the port over once built."""
    demo = build_demo(router, api_port, api_key, api_host=host)
    if starting is not None:
        starting.close()
    demo.launch(server_name=host, server_port=port, auth=page_login(api_key),
                auth_message="Log in with any user name and the API key ($LLM_API_KEY or $LLM_UI_PASSWORD).",
                **launch_options())


def launch_options() -> dict:
    """Theme, CSS and favicon: Gradio 6 takes these at launch(), not in Blocks()."""
    import gradio as gr

    # The system's monospace font: the bundled one lacks glyphs (braces) in some browsers.
    theme = gr.themes.Soft(font_mono=("ui-monospace", "Menlo", "Consolas", "monospace"))
    return {"theme": theme, "css": CSS, "favicon_path": str(AVATAR)}


def build_demo(router: Router, api_port: int = 7871, api_key: str | None = None, *,
               api_host: str = "127.0.0.1") -> gr.Blocks:
    """The page. Everything a user changes lives in that browser session's component values."""
    import gradio as gr  # here, not at the top: `--api-only` never pays for it

    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n"
                    "Short spoken answers from local models or cloud APIs, streamed as they are written.")
        with gr.Row():
            with gr.Column(scale=2, min_width=300):
                gr.HTML(AVATAR_STAGE, elem_id="avatar-panel")   # the digital human: assets/avatar.html
                settings = _settings_panel(router, api_port, api_key, api_host)
                settings.update(_knowledge_panel(router))
            with gr.Column(scale=3):
                page = _chat_panel()
        page.update(settings)
        page["turn"] = gr.State(None)   # this session's running Turn (a CancelToken)
        _wire_chat(demo, router, SimpleNamespace(**page))
        _wire_settings(demo, router, SimpleNamespace(**page), api_port, api_key, api_host)
        if "documents" in page:
            _wire_knowledge(demo, router, SimpleNamespace(**page))
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY)
    return demo


def _chat_panel() -> dict:
    """The chat, its status line, the input row and the examples."""
    import gradio as gr

    from llm import ui_handlers as ui

    chatbot = gr.Chatbot(label="Chat", height=460, avatar_images=(None, str(AVATAR)), elem_id="chatbot",
                         buttons=["copy"], feedback_options=None,
                         placeholder="Ask me anything — 中文或英文都可以。")
    answered = gr.Markdown("", elem_id="answered-by")
    sayings = gr.HTML(ui.Sayings.NONE, elem_id="sayings")   # what the avatar says (hidden; page.js reads it)
    session = gr.Textbox("", visible=False, elem_id="session-id")    # the conversation's id (see SESSION_KEY)
    spoken = gr.Number(-1, visible=False, elem_id="spoken")     # set by SEND_JS / STOP_JS
    with gr.Row():
        msg = gr.Textbox(placeholder="Ask something… 输入问题，按回车发送", show_label=False, scale=5,
                         lines=1, max_lines=6, autofocus=True, elem_id="message")
        send = gr.Button("Send", variant="primary", scale=0, min_width=90, elem_id="send")
        stop = gr.Button("Stop", variant="stop", scale=0, min_width=90, elem_id="stop")
        new = gr.Button("New conversation", scale=0, min_width=90, elem_id="new-conversation")
    gr.Examples(list(ui.EXAMPLES), inputs=[msg], label="Examples 示例")
    return dict(chatbot=chatbot, answered=answered, sayings=sayings, msg=msg, send=send, stop=stop,
                new=new, session=session, spoken=spoken)


def _settings_panel(router: Router, api_port: int, api_key: str | None, api_host: str) -> dict:
    """Provider, persona, speech style, the knowledge toggle, sampling and the API panel."""
    import gradio as gr

    from llm import ui_handlers as ui
    from llm import ui_knowledge as kb_ui

    names, style = router.names(), router.settings.style
    default = router.settings.default if router.settings.default in names else names[0]
    provider = gr.Dropdown(ui.provider_choices(router), value=default, label="Provider", elem_id="provider")
    note = gr.Markdown(ui.provider_note(router, default), elem_id="provider-note")
    fetch = gr.Button("Download the model 下载模型", visible=ui.can_download(router, default),
                      elem_id="download", variant="secondary")
    persona = gr.Dropdown([label for label, _ in ui.PERSONAS], value=ui.PERSONAS[0][0], label="Persona")
    system = gr.Textbox(ui.PERSONAS[0][1], label="System prompt", lines=3, elem_id="system")
    with gr.Row():
        styled = gr.Checkbox(style.short_answer, label="Short spoken answers")
        speak = gr.Checkbox(False, label="Speak replies", elem_id="speak")
        # Off: the turn is answered without the knowledge. Shown only where `knowledge:` is configured.
        knowledge = gr.Checkbox(True, label="Answer from the knowledge", visible=kb_ui.knowledge_on(router),
                                elem_id="use-knowledge")
    budget = gr.Slider(1, 30, value=style.max_seconds, step=0.5, label="Answer budget (seconds of speech)",
                       elem_id="budget")
    temperature0, top_p0, tokens0 = ui.sampling_defaults(router, default)
    with gr.Accordion("Sampling", open=False):
        temperature = gr.Slider(*BOUNDS["temperature"][:2], value=temperature0, step=0.05,
                                label="Temperature (0 = greedy)")
        top_p = gr.Slider(0.05, BOUNDS["top_p"][1], value=top_p0, step=0.01, label="top_p")
        max_new = gr.Slider(1, 4096, value=tokens0, step=1, label="Max new tokens")
    with gr.Accordion("API", open=False, elem_id="api-panel"):
        curl = gr.Code(ui.api_curl(api_port, api_key, default, api_host), language="shell",
                       label=f"POST :{api_port}/ (the same models as this page)", interactive=False,
                       wrap_lines=True, elem_id="api-curl")
    return dict(provider=provider, note=note, fetch=fetch, persona=persona, system=system, styled=styled,
                speak=speak, knowledge=knowledge, budget=budget, temperature=temperature, top_p=top_p,
                max_new=max_new, curl=curl)


def _knowledge_panel(router: Router) -> dict:
    """The knowledge's documents, an upload and a delete: only where `knowledge:` is configured. It is
    part of the page, so behind the page's login like the rest."""
    import gradio as gr

    from llm import ui_knowledge as kb_ui

    if not kb_ui.knowledge_on(router):
        return {}
    with gr.Accordion("Knowledge 知识库", open=False, elem_id="knowledge-panel"):
        documents = gr.HTML(kb_ui.Documents.LOADING, elem_id="knowledge-docs")
        upload = gr.File(label=f"Add documents ({' '.join(kb_ui.UPLOAD_TYPES)})", file_count="multiple",
                         file_types=list(kb_ui.UPLOAD_TYPES), elem_id="knowledge-upload")
        with gr.Row():
            doomed = gr.Dropdown([], value=None, label="Document to delete", elem_id="knowledge-doc", scale=3)
            delete = gr.Button("Delete", variant="stop", scale=0, min_width=90, elem_id="knowledge-delete")
        notice = gr.HTML("", elem_id="knowledge-notice")
    return dict(documents=documents, upload=upload, doomed=doomed, delete=delete, knowledge_notice=notice)


def _wire_chat(demo: gr.Blocks, router: Router, c: SimpleNamespace) -> None:
    """Send/Enter, streaming, Stop, Clear and the error toast after a failed turn."""
    import gradio as gr

    from llm import ui_handlers as ui

    async def respond(history, name, system, short, budget, temperature, top_p, max_new, knowledge, turn,
                      session, progress=gr.Progress()):
        opts = ui.TurnOptions(name, system, short, budget, temperature, top_p, max_new, knowledge, session)
        async for update in ui.respond(router, history, opts, turn, progress):
            yield update

    def start(message, history, turn, spoken):
        return ui.start_turn(message, history, turn, router=router, spoken=spoken)

    inputs = [c.chatbot, c.provider, c.system, c.styled, c.budget, c.temperature, c.top_p, c.max_new,
              c.knowledge, c.turn, c.session]
    # trigger_mode="multiple": a message sent while the last turn is still finishing must start its own
    # turn ("once", the default, silently dropped it); start_turn retires the old turn first.
    started = gr.on([c.send.click, c.msg.submit], start, [c.msg, c.chatbot, c.turn, c.spoken],
                    [c.msg, c.chatbot, c.turn], api_visibility=HIDDEN, concurrency_limit=None,
                    show_progress="hidden", trigger_mode="multiple", js=SEND_JS)
    streaming = started.then(respond, inputs, [c.chatbot, c.answered, c.msg, c.sayings],
                             trigger_mode="multiple", api_visibility=HIDDEN,
                             concurrency_limit=CHAT_CONCURRENCY, concurrency_id="chat")
    streaming.then(ui.report, [c.turn], None, api_visibility=HIDDEN, concurrency_limit=None,
                   trigger_mode="multiple",
                   js="(t) => { window.dhSpeech && window.dhSpeech.flush(); return [t]; }")
    # No cancels= here: the turn's token ends the stream itself, so its last update (the partial
    # reply and "Stopped.") is the last word; a cancelled event's late update could overwrite it.
    c.stop.click(lambda turn, spoken: ui.stop(turn, router, spoken), [c.turn, c.spoken], [c.answered],
                 api_visibility=HIDDEN, concurrency_limit=None, js=STOP_JS)
    # New conversation, and the chat's own trash icon: stop the turn and the speech, empty the chat, and
    # keep the new conversation's id in the browser.
    gr.on([c.new.click, c.chatbot.clear], ui.new_conversation, [c.turn],
          [c.chatbot, c.answered, c.sayings, c.turn, c.session], api_visibility=HIDDEN,
          concurrency_limit=None, js=STOP_SPEAKING_JS).then(None, [c.session], None, js=SAVE_SESSION_JS)
    c.speak.change(None, [c.speak], None, js="(on) => { window.dhSpeech && window.dhSpeech.enable(on); }")
    demo.load(None, js=PAGE_JS)
    demo.load(lambda session: ui.open_conversation(router, session), [c.session],
              [c.chatbot, c.session, c.answered], api_visibility=HIDDEN, concurrency_limit=None,
              js=READ_SESSION_JS).then(None, [c.session], None, js=SAVE_SESSION_JS)


def _wire_settings(demo: gr.Blocks, router: Router, c: SimpleNamespace, api_port: int,
                   api_key: str | None, api_host: str) -> None:
    """Provider choice (readiness note, sampling defaults, curl) and persona presets."""
    import gradio as gr

    from llm import ui_handlers as ui

    c.provider.select(lambda name: ui.choose_provider(router, name), [c.provider],
                      [c.note, c.temperature, c.top_p, c.max_new], api_visibility=HIDDEN,
                      concurrency_limit=None)
    c.provider.change(lambda name: ui.api_curl(api_port, api_key, name, api_host), [c.provider], [c.curl],
                      api_visibility=HIDDEN, concurrency_limit=None)
    c.provider.change(lambda name: gr.update(visible=ui.can_download(router, name)), [c.provider], [c.fetch],
                      api_visibility=HIDDEN, concurrency_limit=None)

    async def fetch(name, progress=gr.Progress(track_tqdm=True)):
        progress(0, desc="Downloading… 正在下载")
        return await ui.download_model(router, name)

    c.fetch.click(fetch, [c.provider], [c.note, c.provider, c.fetch], api_visibility=HIDDEN,
                  concurrency_limit=2)
    c.persona.select(lambda label: dict(ui.PERSONAS)[label], [c.persona], [c.system], api_visibility=HIDDEN,
                     concurrency_limit=None)
    # Readiness can change while the server runs (a model downloaded): read it again per page load.
    def refresh(name):
        return (gr.update(choices=ui.provider_choices(router)), ui.provider_note(router, name),
                gr.update(visible=ui.can_download(router, name)))

    demo.load(refresh, [c.provider], [c.provider, c.note, c.fetch], api_visibility=HIDDEN,
              concurrency_limit=None)


def _wire_knowledge(demo: gr.Blocks, router: Router, c: SimpleNamespace) -> None:
    """The knowledge panel: listed on each page load, refreshed after an upload or a delete."""
    from llm import ui_knowledge as kb_ui

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


if __name__ == "__main__":
    sys.exit(main())
