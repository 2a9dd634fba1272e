"""Conversations (issue 20): how fast barge-in cuts a reply off, and what keeping a conversation on one
replica saves in time to first token against servers with a prefix cache.

    python bench/conversations_bench.py                 # barge-in only (a paced loopback upstream)
    python bench/conversations_bench.py --llama-python /path/venv/bin/python --model m.gguf
                                                        # and replicas: two llama.cpp servers of m.gguf

1. Barge-in. The API (in this process) streams a long reply from a loopback upstream that sends a
   sentence every ~0.2 s; after two sentences a second prompt on the same session is sent. Measured: from
   sending the second prompt to the end of the first stream (the goal: at most 0.5 s), and the second
   request's whole time (it waits for the first turn to be kept, then is answered).
2. Replicas (with --llama-python and --model: llama-cpp-python's server, with its prompt cache). Two
   servers of one model; `--sessions` conversations, each opening with its own long text (~`--context`
   tokens), then short questions, `--turns` turns each, the conversations taking turns one request at a
   time. Once with affinity (each conversation its session: it stays on one server, whose cache holds
   it) and once without (the router's round robin among idle servers). Measured: time to the first
   token of turns 2 and later, median and p90, and the ratio. Without --llama-python this part says
   it was skipped: a model server with a prefix cache is needed (vLLM or llama.cpp).

A benchmark, not a test: it exits 0 whether a goal is met or not.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402

from configs import ProviderConfig, Settings  # noqa: E402
from llm.router import Router  # noqa: E402
from tests.api_helpers import serve_router  # noqa: E402
from tests.fake_servers import FakeOpenAIServer  # noqa: E402

FIXED_REPLY = {"max_new_tokens": 8, "temperature": 0, "extra": {"logit_bias": {"98": 100}}}
STORY = "".join(f"这是故事的第{n}句话。" for n in range(1, 60))


def barge_in(trials: int) -> dict:
    cut, second_total = [], []
    with FakeOpenAIServer([STORY, "好的。"] * trials, chunk_delay=0.02, chunks=len(STORY)) as slow:
        server = serve_router([ProviderConfig("slow", "openai", "m", base_url=slow.base_url)], default="slow",
                              short_answer=False)
        try:
            for i in range(trials):
                first = requests.post(server.url, json={"prompt": "讲个长故事", "session": f"b{i}",
                                                        "stream": True}, stream=True, timeout=60)
                lines, sentences = first.iter_lines(decode_unicode=True), 0
                for line in lines:
                    if line.startswith("data: ") and '"sentence"' in line:
                        sentences += 1
                        if sentences == 2:
                            break
                ended = {}

                def drain(lines=lines, ended=ended) -> None:
                    for _ in lines:
                        pass
                    ended["at"] = time.perf_counter()
                reader = threading.Thread(target=drain)
                reader.start()
                sent = time.perf_counter()
                second = requests.post(server.url, json={"prompt": "停", "session": f"b{i}"}, timeout=60)
                second_total.append(time.perf_counter() - sent)
                reader.join(30)
                first.close()
                if second.status_code != 200 or "at" not in ended:
                    raise SystemExit(f"barge-in trial {i} broke: {second.status_code} {second.text[:200]}")
                cut.append(ended["at"] - sent)
        finally:
            server.stop()
    return {"cut": cut, "second": second_total}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_llama(python: str, model: str, port: int, extra: list[str]) -> subprocess.Popen:
    command = [python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1", "--port", str(port),
               *extra]
    # its log goes to a file: a pipe nobody reads fills up with the model loader's lines and stalls it
    log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama.cpp server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).ok:
                return process
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("llama.cpp server did not start within 120 s")


def _opening(i: int, tokens: int) -> str:
    rng = random.Random(i)
    words = ["museum", "ticket", "gallery", "robot", "planet", "exhibit", "visitor", "guide", "floor", "hall",
             "river", "bridge", "lantern", "garden", "music", "science", "history", "dinosaur", "rocket"]
    return f"Conversation {i}. Remember this text: " + " ".join(rng.choice(words) for _ in range(tokens))


def replicas(python: str, model: str, sessions: int, turns: int, context: int, extra: list[str]) -> dict:
    ports = [_free_port(), _free_port()]
    servers = [_start_llama(python, model, port, extra) for port in ports]
    try:
        urls = tuple(f"http://127.0.0.1:{port}/v1" for port in ports)
        out = {}
        for mode in ("affinity", "round robin"):
            cfg = ProviderConfig("farm", "openai", "m", base_url=urls[0], base_urls=urls, retries=0,
                                 first_token_timeout=300, stall_timeout=300, timeout=300)
            router = Router(Settings(providers={"farm": cfg}, default="farm"), env={})
            histories = {i: [] for i in range(sessions)}
            ttft = {t: [] for t in range(1, turns + 1)}
            try:
                for t in range(1, turns + 1):
                    for i in range(sessions):
                        prompt = (_opening(i + 1000 * len(out), context) if t == 1
                                  else f"Question {t}: one word?")
                        start, first, text = time.perf_counter(), None, []
                        # a random-weight model may say nothing: "b" raised above all keeps a reply
                        for chunk in router.stream(prompt, provider="farm", history=histories[i], style=False,
                                                   params=FIXED_REPLY,
                                                   affinity=f"s{i}" if mode == "affinity" else None):
                            first = first or time.perf_counter()
                            text.append(chunk.text)
                        ttft[t].append((first or time.perf_counter()) - start)
                        histories[i] += [{"role": "user", "content": prompt},
                                         {"role": "assistant", "content": "".join(text)}]
            finally:
                router.close()
            out[mode] = ttft
        return out
    finally:
        for process in servers:
            process.terminate()
            process.wait(10)


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered) * 1000:.0f} / {p90 * 1000:.0f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20, help="barge-in trials (20)")
    p.add_argument("--llama-python", help="a Python with llama-cpp-python[server] installed")
    p.add_argument("--model", help="the .gguf file both llama.cpp servers serve")
    # odd: with an even number, taking turns would send each conversation back to the same server
    p.add_argument("--sessions", type=int, default=5)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--context", type=int, default=600, help="words in each conversation's opening text")
    p.add_argument("--server-args", default="--n_ctx 4096 --cache true --cache_type ram",
                   help="extra llama.cpp server arguments (its prompt cache)")
    args = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    found = barge_in(args.trials)
    print(f"\nbarge-in, {args.trials} trials (median / p90):")
    print(f"  second prompt sent -> first stream ended: {_ms(found['cut'])}   (goal: <= 500 ms)")
    print(f"  second request, whole:                     {_ms(found['second'])}")

    if not (args.llama_python and args.model):
        print("\nreplicas: skipped (needs --llama-python and --model: a server with a prefix cache)")
        return 0
    table = replicas(args.llama_python, args.model, args.sessions, args.turns, args.context,
                     args.server_args.split())
    print(f"\nreplicas: 2 llama.cpp servers, {args.sessions} conversations x {args.turns} turns, "
          f"~{args.context}-word openings; time to first token (median / p90):")
    for mode, ttft in table.items():
        later = [v for t, values in ttft.items() if t > 1 for v in values]
        print(f"  {mode:12s} turn 1: {_ms(ttft[1])}   turns 2+: {_ms(later)}")
    later = {mode: statistics.median([v for t, vs in ttft.items() if t > 1 for v in vs])
             for mode, ttft in table.items()}
    print(f"  round robin / affinity, turns 2+ median: {later['round robin'] / later['affinity']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
