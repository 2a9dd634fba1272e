"""The digital-human assistant: the Gradio page, with the :7871 API started beside it.

python webui.py               UI on 127.0.0.1:7860 and API on 127.0.0.1:7871 (one router, one set of models)
python webui.py --api-only    the API alone, for a GPU box without a browser
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from configs import load_settings
from llm.errors import ConfigError
from llm.router import Router

log = logging.getLogger("webui")


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
    if args.api_only:
        api.serve(app, host, api_port)
        return 0
    server = api.start_in_thread(app, host, api_port)
    try:
        launch_ui(router, host, args.port or settings.server.port, api_port, api_key)
    finally:
        server.stop()
        router.close()
    return 0


def launch_ui(router: Router, host: str, port: int, api_port: int, api_key: str | None) -> None:
    """Build and serve the Gradio page (blocking)."""
    raise NotImplementedError("the UI is being built")


if __name__ == "__main__":
    sys.exit(main())
