"""Soak test of the HTTP API against a fault-injecting upstream: no unexpected errors, no leaks, no hangs.

    python bench/soak.py                           # 2000 requests, 64 at a time, 10% transient faults
    python bench/soak.py --requests 300 --seed 7   # a quicker run

Loopback only and bounded: the API runs in this process (127.0.0.1:0) in front of two fake OpenAI-compatible
upstreams, "flaky" (a seeded mix of faults) falling back to "backup" (healthy) and then "direct" (the echo
provider); cooldown is 0, so the soak measures retries and fallback, not the breaker skipping a provider.
Clients mix POST / and POST /v1/chat/completions, streamed and not, plus a few that hang up early.

An unexpected error is a status other than 200, a client-side failure (timeout, reset), a non-streamed reply
with no text, or a stream that ends in an error event, without its end event or without text. One kind
of stream error is expected, and counted apart: a fault that cuts the upstream *after* text was already
streamed to the client ("mid-reply"/"mid-stream") cannot be taken back, so the API ends that stream with
an honest error event (tests/test_reliability.py checks that); there are at most as many as such faults met.
An error event that does not say so (e.g. "cannot reach" after the stream began) counts as unexpected.

Memory and threads are measured after a warm-up (SDK imported, clients built). The fakes are instrumented
here, not in tests/: their request logs become tallies (RSS then measures the API, not the log), and their
connections and handler-thread exceptions are counted instead of printed, and their listen backlog is 128.

Threads are back to baseline when all growth is idle pools, each within its bound: the API loop's default
executor (asyncio.to_thread; under uvloop its threads are "uvloop_N", under asyncio "asyncio_N"), at most
its max_workers; one fake-upstream handler thread per kept-alive connection still open, at most one such
connection per concurrent client; and the router's idle generation threads. After the run the soak waits
(up to 10 s) for those to settle: a handler thread outlives its connection for a moment while it closes.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import os
import random
import re
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs import ProviderConfig  # noqa: E402
from llm.providers.transport import MAX_CONNECTIONS  # noqa: E402
from tests.api_helpers import generation_threads, serve_router  # noqa: E402
from tests.fake_servers import FakeOpenAIServer  # noqa: E402

REPLY = "你好，我是数字人。今天天气很好。"
TRANSIENT = ("status:503", "status:429:0", "drop", "empty", "html", "truncate")   # absorbed by retry/fallback
DEADLINE = ("hang", "stall")            # absorbed by first_token_timeout/stall_timeout, then the fallback
MID_REPLY = ("drop", "truncate", "stall")   # may cut a stream after text reached the client
KINDS = ("seed", "seed-stream", "v1", "v1-stream")
LISTEN_BACKLOG = 128            # for the fakes, like a real server (each dropped SYN costs a client 1-3 s)
SETTLE_S = 10                   # after the run: for generation threads, hangs and closing handlers to end


@dataclass
class Result:
    kind: str
    ok: bool = False
    provider: str | None = None
    latency_ms: float | None = None
    error: str | None = None        # set for an unexpected error
    cut: str | None = None          # set for an expected mid-stream cut


class Counter(logging.Handler):
    """Counts log records by level and logger; keeps the first few ERROR messages."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter = collections.Counter()
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[(record.levelname, record.name)] += 1
        if record.levelno >= logging.ERROR and len(self.errors) < 3:
            self.errors.append(f"{record.name}: {record.getMessage()[:300]}")


def tap(fake: FakeOpenAIServer) -> collections.Counter:
    """Count the fake upstream's TCP connections ("connections") and the exceptions its handler threads
    end with (by type, instead of socketserver printing each traceback to stderr)."""
    counts: collections.Counter = collections.Counter()
    httpd = fake._httpd
    accept = httpd.process_request

    def process_request(request, address):
        counts["connections"] += 1
        return accept(request, address)

    def handle_error(request, address):
        counts[sys.exc_info()[0].__name__] += 1

    httpd.process_request, httpd.handle_error = process_request, handle_error
    httpd.socket.listen(LISTEN_BACKLOG)     # socketserver's backlog of 5 drops SYNs under this load
    fake.requests = Tally()     # keeps no bodies: RSS then measures the API, not the fake's request log
    return counts


class Tally:
    """Stands in for a fake upstream's `requests` list: counts what is appended, keeps nothing."""

    def __init__(self) -> None:
        self.count = 0

    def append(self, _item) -> None:
        self.count += 1     # the fake appends under its own lock

    def __len__(self) -> int:
        return self.count


# ---- the process: memory and threads -------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def thread_groups() -> collections.Counter:
    """Live threads by name, with numbers folded: "asyncio_3" -> "asyncio_N"."""
    return collections.Counter(re.sub(r"\d+", "N", t.name) for t in threading.enumerate())


def default_executor_threads(handle) -> str:
    """How the API loop's default executor (asyncio.to_thread, run_in_executor(None, ...)) names its
    threads, folded like `thread_groups`: uvloop's "uvloop_N", asyncio's "asyncio_N"."""
    loop = handle.server.servers[0].get_loop()
    return "uvloop_N" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio_N"


def default_executor_size() -> int:
    """concurrent.futures.ThreadPoolExecutor's default max_workers, which both loops' executors use."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()     # process_cpu_count: Python 3.13+
    return min(32, (cpus or 1) + 4)


# ---- the fault script ------------------------------------------------------------------------------

def fault_script(rng: random.Random, length: int, share: float, hang_share: float) -> list[str]:
    """`length` faults for the upstream's requests in arrival order: mostly "ok" (the last one repeats)."""
    script = []
    for _ in range(length):
        x = rng.random()
        script.append(rng.choice(DEADLINE) if x < hang_share else
                      rng.choice(TRANSIENT) if x < hang_share + share else "ok")
    return script + ["ok"]


# ---- one client request ----------------------------------------------------------------------------

def body_for(kind: str, i: int) -> tuple[str, dict]:
    prompt = f"你好，第{i}个问题：今天怎么样？"
    if kind.startswith("seed"):
        return "/", {"prompt": prompt, "provider": "flaky", "stream": kind.endswith("stream")}
    return "/v1/chat/completions", {"model": "flaky", "stream": kind.endswith("stream"),
                                    "messages": [{"role": "user", "content": prompt}]}


def sse(response: requests.Response, deadline: float) -> list:
    events = []
    for line in response.iter_lines(decode_unicode=True):
        if time.monotonic() > deadline:
            raise TimeoutError("the stream took longer than the request timeout")
        if line and line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def call(session: requests.Session, url: str, kind: str, i: int, timeout: float) -> Result:
    path, body = body_for(kind, i)
    stream = body["stream"]
    start = time.perf_counter()
    result = Result(kind)
    try:
        with session.post(url + path, json=body, stream=stream, timeout=(5, timeout)) as r:
            if r.status_code != 200:
                result.error = f"{kind}: HTTP {r.status_code}: {r.text[:300]}"
                return result
            if not stream:
                data = r.json()
                if kind == "seed":
                    text, result.provider = data.get("response"), data.get("provider")
                else:
                    text, result.provider = data["choices"][0]["message"]["content"], data.get("model")
                if not text:
                    reply = json.dumps(data, ensure_ascii=False)[:300]
                    result.error = f"{kind}: 200 with an empty reply: {reply}"
                    return result
            else:
                events = sse(r, time.monotonic() + timeout)
                last = events[-1] if events else None
                if isinstance(last, dict) and "error" in last:
                    message = last["error"].get("message", "")
                    if re.search(r"mid-reply|mid-stream", message):
                        result.cut = message
                    else:
                        result.error = f"{kind}: error event: {json.dumps(last, ensure_ascii=False)[:300]}"
                    return result
                if kind == "seed-stream":
                    if not (isinstance(last, dict) and last.get("done")):
                        result.error = f"{kind}: the stream ended without its done event: {events[-3:]}"
                        return result
                    text, result.provider = last.get("response"), last.get("provider")
                else:
                    if last != "[DONE]":
                        result.error = f"{kind}: the stream ended without [DONE]: {events[-3:]}"
                        return result
                    chunks = [e for e in events if isinstance(e, dict)]
                    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
                    result.provider = chunks[-1].get("model") if chunks else None
                if not text:
                    result.error = f"{kind}: a stream without text: {events[-3:]}"
                    return result
    except (requests.RequestException, ValueError, KeyError, IndexError, TimeoutError) as e:
        result.error = f"{kind}: {type(e).__name__}: {str(e)[:300]}"
        return result
    result.ok, result.latency_ms = True, (time.perf_counter() - start) * 1000
    return result


def hang_up(port: int, i: int, delay: float) -> Result:
    """Connect, send a POST /, close the socket before the reply: the server must cancel the generation."""
    data = json.dumps({"prompt": f"挂断{i}", "provider": "flaky", "stream": i % 2 == 0}).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
            time.sleep(delay)
    except OSError as e:
        return Result("hang-up", error=f"hang-up: {type(e).__name__}: {e}")
    return Result("hang-up", ok=True)


# ---- the run ---------------------------------------------------------------------------------------

def soak(args, url: str, port: int, plan: list[str], rng: random.Random):
    """Run `plan` with `args.concurrency` workers until done or the wall-clock cap:
    (results, seconds, whether the cap stopped it, [(requests started, RSS MB)] at each tenth)."""
    delays = [rng.uniform(0, 0.05) for _ in plan]
    step = max(1, len(plan) // 10)
    rss_trend: list[tuple[int, float]] = []
    counter, lock = itertools.count(), threading.Lock()
    local = threading.local()
    results: list[Result] = []
    stop_at = time.monotonic() + args.max_seconds
    capped = threading.Event()

    def worker() -> None:
        local.session = requests.Session()
        try:
            while True:
                with lock:
                    i = next(counter)
                if i >= len(plan):
                    return
                if time.monotonic() > stop_at:
                    capped.set()
                    return
                if i % step == 0 and i:
                    rss_trend.append((i, rss_mb()))
                kind = plan[i]
                r = hang_up(port, i, delays[i]) if kind == "hang-up" else \
                    call(local.session, url, kind, i, args.timeout)
                results.append(r)
        finally:
            local.session.close()

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency, thread_name_prefix="soak") as pool:
        futures = [pool.submit(worker) for _ in range(args.concurrency)]
        for f in futures:
            f.result()
    rss_trend.append((len(results), rss_mb()))
    return results, time.perf_counter() - start, capped.is_set(), rss_trend


def settle(check, limit: float) -> tuple[bool, float]:
    """Poll `check` until true or `limit` seconds; (its last value, seconds waited)."""
    start = time.monotonic()
    while not check() and time.monotonic() - start < limit:
        time.sleep(0.1)
    return check(), time.monotonic() - start


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@dataclass
class Upstream:
    """A fake upstream and what it saw during the soak (counted from the end of the warm-up)."""

    name: str
    fake: FakeOpenAIServer
    tap: collections.Counter
    requests_before: int = 0
    connections_before: int = 0

    def mark(self) -> None:
        self.requests_before, self.connections_before = len(self.fake.requests), self.tap["connections"]

    @property
    def requests(self) -> int:
        return len(self.fake.requests) - self.requests_before

    @property
    def connections(self) -> int:
        return self.tap["connections"] - self.connections_before


@dataclass
class Snapshot:
    """Live threads by name and the upstreams' open connections, read at one moment."""

    threads: collections.Counter
    connections: dict[str, int]     # upstream name -> TCP connections its fake holds open now

    @classmethod
    def take(cls, upstreams: tuple[Upstream, ...]) -> Snapshot:
        return cls(thread_groups(), {u.name: len(u.fake._connections) for u in upstreams})


@dataclass
class Pools:
    """Thread growth from `before` to `after`: what idle pools explain (with why), what they do not."""

    explained: int
    unexplained: dict[str, int]
    reasons: list[str]


@dataclass
class Measured:
    results: list[Result]
    seconds: float
    capped: bool
    rss: tuple[float, float]
    rss_trend: list[tuple[int, float]]
    threads: tuple[Snapshot, Snapshot]
    pools: Pools
    settled_s: float
    met: collections.Counter       # the faults the flaky upstream's requests met


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="client requests in all (default 2000)")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--fault-share", type=float, default=0.1,
                        help="share of upstream requests that meet a transient fault (default 0.1)")
    parser.add_argument("--hang-share", type=float, default=0.002,
                        help="share of upstream requests that hang or stall until a deadline (default 0.002)")
    parser.add_argument("--hangup-share", type=float, default=0.02,
                        help="share of clients that hang up before the reply (default 0.02)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-delay", type=float, default=0.002,
                        help="seconds between the upstream's stream events (default 0.002)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds per request (default 30)")
    parser.add_argument("--max-seconds", type=float, default=300,
                        help="wall-clock cap: stop submitting after this (default 300)")
    parser.add_argument("--max-rss-mb", type=float, default=50, help="allowed RSS growth (default 50 MB)")
    args = parser.parse_args(argv)

    counter = Counter()
    logging.basicConfig(level=logging.WARNING, handlers=[counter])     # count, do not print, warnings
    rng = random.Random(args.seed)
    plan = ["hang-up" if rng.random() < args.hangup_share else rng.choice(KINDS)
            for _ in range(args.requests)]
    warmup = [(kind, provider) for provider in ("flaky", "backup") for kind in KINDS]
    script = ["ok"] * len(KINDS) + fault_script(rng, 3 * args.requests, args.fault_share, args.hang_share)
    deadlines = dict(cooldown=0, first_token_timeout=5, stall_timeout=5)
    print(f"soak: {args.requests} requests, {args.concurrency} concurrent, fault share {args.fault_share:g} "
          f"(+{args.hang_share:g} hang/stall), {args.hangup_share:g} hang-ups, seed {args.seed}; "
          f"{os.cpu_count()} CPUs, cap {args.max_seconds:g} s")

    fakes = [FakeOpenAIServer([REPLY], chunk_delay=args.chunk_delay, faults=script),
             FakeOpenAIServer([REPLY], chunk_delay=args.chunk_delay)]
    server = None
    try:
        for fake in fakes:
            fake.start()
        flaky, backup = (Upstream(name, fake, tap(fake)) for name, fake in zip(("flaky", "backup"), fakes,
                                                                                 strict=True))
        configs = [ProviderConfig("flaky", "openai", "fake-model", base_url=flaky.fake.base_url,
                                  fallback=("backup", "direct"), **deadlines),
                   ProviderConfig("backup", "openai", "fake-model", base_url=backup.fake.base_url,
                                  **deadlines)]
        server = serve_router(configs)
        logging.getLogger("uvicorn").addHandler(counter)   # uvicorn's own loggers do not propagate

        with requests.Session() as session:     # imports the SDK, builds the clients, fills the pools
            for kind, provider in warmup:
                path, body = body_for(kind, 0)
                body["provider" if kind.startswith("seed") else "model"] = provider
                session.post(server.url + path, json=body, timeout=30).raise_for_status()
        upstreams, executor = (flaky, backup), default_executor_threads(server.handle)
        threads_before, rss_before = Snapshot.take(upstreams), rss_mb()
        flaky.mark()
        backup.mark()

        results, seconds, capped, rss_trend = soak(args, server.url, server.handle.port, plan, rng)

        def settled() -> bool:
            if generation_threads() or flaky.fake.hanging or backup.fake.hanging:
                return False
            after = Snapshot.take(upstreams)
            return not idle_pool_growth(threads_before, after, executor, args.concurrency).unexplained

        _, settled_s = settle(settled, SETTLE_S)
        threads_after = Snapshot.take(upstreams)
        run = Measured(results, seconds, capped, (rss_before, rss_mb()), rss_trend,
                       (threads_before, threads_after),
                       idle_pool_growth(threads_before, threads_after, executor, args.concurrency), settled_s,
                       injected(script, flaky.requests_before, flaky.requests))
        report(args, run, flaky, backup, counter)
        return verdict(args, run, flaky, backup)
    finally:
        if server is not None:
            server.stop()
        for fake in fakes:
            fake.stop()


def injected(script: list[str], start: int, count: int) -> collections.Counter:
    """The faults met by upstream requests number start..start+count (the last script entry repeats)."""
    met = script[start:start + count]
    return collections.Counter(met + [script[-1]] * (count - len(met)))


def idle_pool_growth(before: Snapshot, after: Snapshot, executor: str, concurrency: int) -> Pools:
    """Thread growth that idle pools explain, each only up to its bound (more is a leak):

    - the API loop's default executor (`executor`: its threads' folded name): a ThreadPoolExecutor whose
      idle workers stay for the life of the loop, at most `default_executor_size()` of them in all;
    - the fake upstreams' handler threads, one per TCP connection the router keeps alive: at most the
      connections open at that moment, each upstream's at most `concurrency` (one upstream request per
      client request at a time: no hedging here) and MAX_CONNECTIONS (the router's pool per client);
      the router closes them after KEEPALIVE_SECONDS idle;
    - the router's reused generation threads (llm.threads.spawn: named "pool-idle" while idle, they end
      after a minute; at most three per request in flight: the async bridge, the attempt and a hedge)."""
    grown = {name: n - before.threads[name] for name, n in after.threads.items() if n > before.threads[name]}
    size = default_executor_size()
    kept = {name: min(n, concurrency, MAX_CONNECTIONS) for name, n in after.connections.items()}
    handlers = "Thread-N (process_request_thread)"
    bounds = {
        executor: (max(0, size - before.threads[executor]),
                   f"the API loop's default executor (asyncio.to_thread), {after.threads[executor]} of at "
                   f"most {size} workers"),
        handlers: (max(0, sum(kept.values()) - before.threads[handlers]),
                   "fake-upstream handlers of kept-alive connections, open now: "
                   + ", ".join(f"{name} {n}" for name, n in after.connections.items())),
        "pool-idle": (3 * concurrency, "the router's idle generation threads"),
    }
    explained, unexplained, reasons = 0, {}, []
    for name, n in grown.items():
        bound, why = bounds.get(name, (0, ""))
        explained += min(n, bound)
        if min(n, bound):
            reasons.append(f"{name} +{min(n, bound)}: {why}")
        if n > bound:
            unexplained[name] = n - bound
    return Pools(explained, unexplained, reasons)


def report(args, run: Measured, flaky: Upstream, backup: Upstream, counter: Counter) -> None:
    done = [r for r in run.results if r.kind != "hang-up"]
    ok = [r for r in done if r.ok]
    bad = [r for r in run.results if r.error]
    cuts = [r for r in done if r.cut]
    by_kind = collections.Counter(r.kind for r in run.results)
    print(f"\nrequests: {len(run.results)} of {args.requests} in {run.seconds:.1f} s"
          f"{' (STOPPED at the wall-clock cap)' if run.capped else ''}: "
          + ", ".join(f"{k} {by_kind[k]}" for k in (*KINDS, "hang-up")))
    print(f"completed: {len(ok)}, throughput {len(ok) / run.seconds:.1f} req/s")
    lat = sorted(r.latency_ms for r in ok)
    if lat:
        print(f"latency: p50 {percentile(lat, 50):.0f} ms, p99 {percentile(lat, 99):.0f} ms, "
              f"max {lat[-1]:.0f} ms")
    answered = collections.Counter(r.provider for r in ok)
    print("answered by: " + ", ".join(f"{p} {n}" for p, n in answered.most_common()))
    faults = {k: v for k, v in run.met.items() if k != "ok"}
    print(f"faults met by flaky's requests: {sum(faults.values())} ("
          + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())) + ")")
    for u in (flaky, backup):
        errors = {k: v for k, v in u.tap.items() if k != "connections"}
        print(f"upstream {u.name}: {u.requests} requests over {u.connections} TCP connections; its handler "
              f"threads ended with: {', '.join(f'{k} {v}' for k, v in errors.items()) or 'no error'}")
    print(f"unexpected errors: {len(bad)}")
    for message, n in collections.Counter(r.error for r in bad).most_common(5):
        print(f"  {n} x {message}")
    print(f"streams cut mid-reply after text was sent (expected, by design): {len(cuts)} "
          f"(mid-reply faults met: {sum(run.met[k] for k in MID_REPLY)})")
    for message, n in collections.Counter(re.sub(r"\d+", "N", r.cut) for r in cuts).most_common(3):
        print(f"  {n} x {message}")
    logs = collections.Counter()
    for (level, name), n in counter.counts.items():
        logs[f"{level} {name}"] += n
    print("log records: " + (", ".join(f"{k} {v}" for k, v in logs.most_common()) or "none"))
    for message in counter.errors:
        print(f"  {message}")
    print(f"RSS: {run.rss[0]:.1f} MB before, {run.rss[1]:.1f} MB after ({run.rss[1] - run.rss[0]:+.1f} MB); "
          "along the run: " + ", ".join(f"{mb:.0f} MB at {i}" for i, mb in run.rss_trend))
    before, after = (snapshot.threads for snapshot in run.threads)
    print(f"threads: {sum(before.values())} before, {sum(after.values())} after "
          f"(settled in {run.settled_s:.1f} s; +{run.pools.explained} idle in bounded pools; "
          f"unexplained: {run.pools.unexplained or 'none'})")
    for reason in run.pools.reasons:
        print(f"  {reason}")
    print("  before: " + ", ".join(f"{k} {v}" for k, v in sorted(before.items())))
    print("  after:  " + ", ".join(f"{k} {v}" for k, v in sorted(after.items())))
    print(f"generation threads (llm-* but llm-api) left: {len(generation_threads())}; upstream requests "
          f"hanging: flaky {flaky.fake.hanging}, backup {backup.fake.hanging}")


def verdict(args, run: Measured, flaky: Upstream, backup: Upstream) -> int:
    bad = sum(1 for r in run.results if r.error)
    cuts = sum(1 for r in run.results if r.cut)
    mid_reply = sum(run.met[k] for k in MID_REPLY)
    rss_growth = run.rss[1] - run.rss[0]
    reasons = []
    if run.capped:
        reasons.append(f"stopped at the {args.max_seconds:g} s cap after {len(run.results)} of "
                       f"{args.requests} requests")
    if bad:
        reasons.append(f"{bad} unexpected errors")
    if cuts > mid_reply:
        reasons.append(f"{cuts} streams cut mid-reply but only {mid_reply} such faults")
    if not rss_growth < args.max_rss_mb:
        reasons.append(f"RSS {rss_growth:+.1f} MB (>= {args.max_rss_mb:g})")
    left = generation_threads()
    if left:
        reasons.append(f"{len(left)} generation threads left: {left[:5]}")
    if run.pools.unexplained:
        reasons.append(f"threads not back to baseline: {run.pools.unexplained}")
    hanging = flaky.fake.hanging + backup.fake.hanging
    if hanging:
        reasons.append(f"upstream requests still hanging: {hanging}")
    if reasons:
        print("FAIL: " + "; ".join(reasons))
        return 1
    print(f"PASS: 0 unexpected errors, RSS {rss_growth:+.1f} MB (< {args.max_rss_mb:g}), threads back to "
          f"baseline (bounded idle pools aside), 0 generation threads, 0 upstream requests hanging")
    return 0


if __name__ == "__main__":
    sys.exit(main())
