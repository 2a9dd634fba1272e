"""The digital-human assistant: the Gradio page, with the :7871 API started beside it.

python webui.py               UI on 127.0.0.1:7860 and API on 127.0.0.1:7871 (one router, one set of models)
python webui.py --api-only    the API alone, for a GPU box without a browser
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from configs import load_settings
from llm.errors import ConfigError
from llm.router import Router

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger("webui")
# The page's layout, words, CSS and JavaScript: llm/ui_page.py, llm/ui_text.py and assets/.


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
    from llm import ollama

    discovery = ollama.discover(router)     # a running Ollama's models, found in the background
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
        try:
            api.serve(app, host, api_port)
        finally:
            if discovery is not None:
                discovery.stop()
        return 0
    starting = Starting(host, ui_port)    # the page's port answers while Gradio imports (seconds)
    server = api.start_in_thread(app, host, api_port)
    try:
        launch_ui(router, host, ui_port, api_port, api_key, starting)
    finally:
        starting.close()
        server.stop()
        if discovery is not None:
            discovery.stop()
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
    from llm import ui_page

    return ui_page.launch_options()


def build_demo(router: Router, api_port: int = 7871, api_key: str | None = None, *,
               api_host: str = "127.0.0.1") -> gr.Blocks:
    """The page (llm/ui_page.py): imported here, so `--api-only` never pays for Gradio."""
    from llm import ui_page

    return ui_page.build_demo(router, api_port, api_key, api_host=api_host)


if __name__ == "__main__":
    sys.exit(main())
