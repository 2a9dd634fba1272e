"""`python -m llm download NAME` fetches a local model's weights; `python -m llm status` shows readiness;
`python -m llm scoreboard [NAME...]` scores how fit each provider's replies are for speech."""

from __future__ import annotations

import argparse
import sys
from contextlib import closing
from typing import Sequence

from configs import load_settings

from .download import SOURCES, DownloadError, download, nothing_to_download, plan
from .errors import ConfigError

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 failed, 2 bad usage or config)."""
    parser = argparse.ArgumentParser(prog="python -m llm", description=__doc__)
    parser.add_argument("--config", metavar="PATH",
                        help="settings file (default: $LLM_CONFIG or ./configs.yaml)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    fetch = commands.add_parser("download", help="download a local provider's model weights")
    fetch.add_argument("names", nargs=1, metavar="name", help="a provider name, e.g. qwen, linly, chatglm")
    fetch.add_argument("--source", choices=SOURCES, default="huggingface")
    fetch.add_argument("--dir", metavar="DIR", help="download into this folder (default: the HF cache, "
                                                   "or the provider's model folder)")
    fetch.add_argument("--repo", metavar="ID", help="the repo id to fetch, when it differs on this source")
    status = commands.add_parser("status", help="show whether each provider is ready, and the fix if not")
    board = commands.add_parser("scoreboard", help="score each ready provider's replies for speech: budget, "
                                                   "sentence ends, leaks, latency")
    board.add_argument("names", nargs="*", metavar="NAME", help="providers to score (default: all ready)")
    for command, run in ((fetch, _download), (status, _status), (board, _scoreboard)):
        # --config after the command too; SUPPRESS keeps the top-level value when it is not given here
        command.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.set_defaults(run=run, names=[])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    if unknown := [n for n in args.names if n not in settings.providers]:
        known = ", ".join(settings.providers)
        print(f"error: unknown provider {unknown[0]!r}; known: {known}", file=sys.stderr)
        return USAGE_ERROR
    return args.run(settings, args)


def _download(settings, args) -> int:
    cfg = settings.providers[args.names[0]]
    if reason := nothing_to_download(cfg):
        print(reason)
        return 0
    try:
        target = plan(cfg, args.source, args.dir, args.repo)
        print(f"downloading {target.repo_id} from {target.source} for provider {cfg.name} ...",
              file=sys.stderr)
        path = download(target)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(f"downloaded {target.repo_id} to {path}")
    if target.local_dir is not None and str(target.local_dir) != cfg.model:
        print(f"to use it, set in configs.yaml:\n  providers:\n    {cfg.name}:\n      model: {path}")
    return 0


def _status(settings, args) -> int:
    """Each provider's readiness; from the running API's /health when one answers on this config's
    api_port (it alone knows which providers are cooling down after failures), else checked here."""
    import json
    import urllib.request

    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host.strip("[]")
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.server.api_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=1) as response:   # /health needs no API key
            statuses = json.load(response)["providers"]
    except (OSError, ValueError, KeyError, TypeError):
        statuses = None     # no API running here (or not ours): check the providers directly
    if isinstance(statuses, dict) and statuses:
        print(f"(live, from the API on port {settings.server.api_port})")
    else:
        from .router import Router

        statuses = {name: st.as_dict() for name, st in Router(settings).statuses().items()}
    width = max(map(len, statuses))
    for name, st in statuses.items():
        fix = f" -> {st['fix']}" if st.get("fix") else ""
        print(f"{name:<{width}}  " + ("ready" if st["ready"] else f"not ready: {st['reason']}{fix}"))
    return 0


def _scoreboard(settings, args) -> int:
    from . import scoreboard
    from .router import Router

    with closing(Router(settings)) as router:
        scores = scoreboard.run(router, args.names or None)
    if not scores:
        print("no provider is ready to score: see python -m llm status", file=sys.stderr)
        return 1
    print(scoreboard.table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
