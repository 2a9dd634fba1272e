"""`python -m llm download NAME` fetches a local model's weights; `python -m llm status` shows readiness;
`python -m llm scoreboard [NAME...]` scores how fit each provider's replies are for speech;
`python -m llm kb index|search|stats|eval` builds, queries and measures the knowledge (configs.yaml)."""

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
    fetch.add_argument("names", nargs=1, metavar="name",
                       help="a provider name (qwen, linly, chatglm), or an embedding model for the knowledge "
                            "(bge-small-zh, bge-small-en, multilingual-e5-small)")
    fetch.add_argument("--source", choices=SOURCES, default="huggingface")
    fetch.add_argument("--dir", metavar="DIR", help="download into this folder (default: the HF cache, "
                                                   "or the provider's model folder)")
    fetch.add_argument("--repo", metavar="ID", help="the repo id to fetch, when it differs on this source")
    status = commands.add_parser("status", help="show whether each provider is ready, and the fix if not")
    board = commands.add_parser("scoreboard", help="score each ready provider's replies for speech: budget, "
                                                   "sentence ends, leaks, latency")
    board.add_argument("names", nargs="*", metavar="NAME", help="providers to score (default: all ready)")
    kb = commands.add_parser("kb", help="the knowledge: index the documents and FAQ, search, stats, eval")
    kb.add_argument("action", choices=("index", "search", "stats", "eval"))
    kb.add_argument("text", nargs="?", metavar="QUESTION|FILE.csv",
                    help="search: the question; eval: a CSV of question,kind,source,answer")
    kb.add_argument("--sweep", action="store_true", help="eval: also show other thresholds' decisions")
    for command, run in ((fetch, _download), (status, _status), (board, _scoreboard), (kb, _kb)):
        # --config after the command too; SUPPRESS keeps the top-level value when it is not given here
        command.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.set_defaults(run=run, names=[])
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    from .knowledge.dense import EMBEDDINGS

    if unknown := [n for n in args.names if n not in settings.providers
                   and not (args.run is _download and n in EMBEDDINGS)]:
        known = ", ".join(settings.providers)
        print(f"error: unknown provider {unknown[0]!r}; known: {known}", file=sys.stderr)
        return USAGE_ERROR
    return args.run(settings, args)


def _download(settings, args) -> int:
    from configs import ProviderConfig

    from .knowledge.dense import EMBEDDINGS

    name = args.names[0]
    embedding = EMBEDDINGS.get(name) if name not in settings.providers else None
    cfg = ProviderConfig(name, "local", embedding.repo_id) if embedding else settings.providers[name]
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
    if embedding is not None:
        where = name if target.local_dir is None else path
        print("to search the knowledge by meaning too, set in configs.yaml:\n"
              f"  knowledge:\n    embedding: {where}")
        return 0
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
        from . import ollama
        from .router import Router

        router = Router(settings)
        ollama.discover(router, background=False)     # one probe of a running Ollama, now
        statuses = {name: st.as_dict() for name, st in router.statuses().items()}
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


def _kb(settings, args) -> int:
    from pathlib import Path

    from .knowledge import Knowledge
    from .knowledge import evaluate as kb_eval

    if not settings.knowledge.enabled:
        print(f"error: no knowledge configured in {settings.source}: set knowledge.docs (a folder) "
              "and/or knowledge.faq (a CSV)", file=sys.stderr)
        return USAGE_ERROR
    if args.action in ("search", "eval") and not args.text:
        what = "a question" if args.action == "search" else "the evaluation CSV"
        print(f"error: kb {args.action} needs {what}", file=sys.stderr)
        return USAGE_ERROR
    from .router import Router

    router = Router(settings)     # its knowledge has the writer of questions, when one is configured
    knowledge: Knowledge = router.knowledge
    with closing(router):
        if args.action == "index":
            knowledge.writer, writer = None, knowledge.writer     # written below, in the foreground
            counts = knowledge.refresh(force=True) or {}
            print(", ".join(f"{k} {v}" for k, v in counts.items()) + f"; index at {knowledge.index.path}")
            if writer is not None:
                knowledge.writer = writer
                todo = len(knowledge.index.unasked(limit=1_000_000))
                print(f"writing the questions of {todo} passages with {settings.knowledge.questions} ...")
                print(f"questions written for {knowledge.write_questions()} passages")
            for f in knowledge.index.files():
                if f["skipped"]:
                    print(f"  skipped {f['source']}: {f['skipped']}")
        elif args.action == "stats":
            knowledge.refresh(force=True)
            for key, value in knowledge.index.stats().items():
                print(f"{key:14} {value}")
            print(f"{'by meaning':14} {knowledge.dense_status}")
        elif args.action == "search":
            found = knowledge.lookup(args.text)
            says = "FAQ answer" if found.passages == () and found.sources else "miss reply"
            if found.answer is not None:
                print(f"{says} (no model call): {found.answer}")
            elif not found.passages:
                print("nothing good enough: the model answers as usual (on_miss: chat)")
            for hit in knowledge.search(args.text):
                text = " ".join(hit.passage.text.split())
                print(f"{hit.score:.3f} {hit.kind:3} {hit.passage.source}: {text[:100]}")
        else:
            try:
                cases = kb_eval.read_cases(Path(args.text))
            except (OSError, ValueError) as e:
                print(f"error: {e}", file=sys.stderr)
                return USAGE_ERROR
            report = kb_eval.run(knowledge, cases)
            cfg = settings.knowledge
            print(kb_eval.table(report, cfg))
            if args.sweep:
                print(kb_eval.sweep(report, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
