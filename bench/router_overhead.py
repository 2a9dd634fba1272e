"""Latency and throughput that the router's OpenAI-compatible API adds over a direct SDK call (issue #9).

    python bench/router_overhead.py                 # 300 sequential calls per path and mode, then 16 clients
    python bench/router_overhead.py --quick         # 100 sequential calls, 2 s throughput runs
    python bench/router_overhead.py --litellm-python /tmp/litellm-venv/bin/python   # LiteLLM side by side
    python bench/router_overhead.py --in-process    # the API in this process, as bench/soak.py serves it

One upstream, up to three paths to it, the same openai SDK client code on each:
  direct   openai.OpenAI(base_url=<upstream>/v1, api_key="x", max_retries=0) straight to the upstream;
  router   the API as tests/api_helpers.serve_router builds it, with ProviderConfig("up", "openai", "m",
           base_url=<upstream>/v1), called with model="up" and extra_body={"style": "none"} (the speech
           style leaves the reply alone). By default it runs in a child process, so this process's client
           threads do not share its GIL, as a LiteLLM proxy has a process of its own; --in-process serves
           it here instead;
  litellm  a LiteLLM proxy (one worker, no database) in front of the same upstream, when `litellm` is
           importable here or by the interpreter --litellm-python names; skipped with a note otherwise.
           It is never a requirement of this repo: install it in a throwaway venv to compare.

The upstream is a minimal asyncio HTTP/1.1 server in a child process (this file, --serve-upstream), not
tests/fake_servers.FakeOpenAIServer, whose own cost would swamp the router's: it writes headers and body
in separate small writes without TCP_NODELAY (a non-streamed reply then waits ~40 ms for a delayed ACK),
and a thread per connection. This one speaks OpenAI chat-completions JSON and SSE (a role chunk, one chunk
per character of a 16-character Chinese reply, a finish chunk, `data: [DONE]`, each event its own chunked
write, as real servers send them), keeps connections alive, and counts the TCP connections it accepts
(GET /stats), which shows whether a path reuses its upstream connections.

Figures, all taken by the client, in milliseconds of wall clock:
  sequential: one client per path, `--requests` calls per mode after `--warmup`; each proxy takes turns
  with the direct path call by call (in a rotating order) so that drift hits them alike, one proxy after
  the other (LiteLLM's work after each reply would otherwise land on the next call, whoever makes it), so
  direct is listed once per proxy; before each block, and each throughput run, the servers go idle.
  Non-streaming: the whole call. Streaming: to the first text chunk, and to the end of the stream (the
  SDK has read `data: [DONE]`). "added" is a proxy's percentile minus the same percentile of the direct
  calls it took turns with.
  throughput: `--concurrency` threads with one client each (two warm-up calls each, off the clock), up to
  2 x `--requests` calls or `--seconds` per run; requests/s, and each path as a share of direct. Below it:
  the server's CPU time per call (from /proc: the API's or LiteLLM's process; not with --in-process), and
  the upstream TCP connections opened per call.

Goals from the issue: added median <= 2 ms, added p99 <= 5 ms, and >= 2x LiteLLM's throughput. LiteLLM as
measured elsewhere: +14 ms p50, +19 ms p99, 80 req/s; when LiteLLM runs here, its figures from this run are
used instead. It is a benchmark, not a test: it exits 0 whether the goals are met or not, and 1 only when
the run itself broke (a call failed, or a path's text differs from the direct one). Every server binds
127.0.0.1 and is stopped before the script returns; the child servers also stop when this process dies
(they exit when their stdin closes). The machine's other load shows in the figures: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPLY = "你好，我是数字人。今天天气很好。"
MESSAGES = [{"role": "user", "content": "你好，今天天气怎么样？"}]
GOAL_MEDIAN_MS, GOAL_P99_MS, GOAL_VS_LITELLM = 2.0, 5.0, 2.0
LITELLM_ELSEWHERE = {"p50": 14.0, "p99": 19.0, "rps": 80.0}    # the figures, measured elsewhere
START_TIMEOUT = 90.0    # seconds for a child server to listen (LiteLLM imports a lot)
WARMUP_PER_CLIENT = 2   # calls each throughput client makes before the clock starts


# ---- the upstream: a fast OpenAI-compatible fake (in a child process) ---------------------------------

class _Upstream(asyncio.Protocol):
    """One keep-alive connection: requests with Content-Length bodies, each answered at once."""

    def __init__(self, stats: dict):
        self.stats, self.buf, self.transport = stats, bytearray(), None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.stats["connections"] += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            if "chunked" in headers.get("transfer-encoding", "").lower():
                return self._send(400, _error("chunked request bodies are not supported"), close=True)
            length = int(headers.get("content-length") or 0)
            if len(self.buf) < end + 4 + length:
                return None     # the rest of the body is on its way
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            self._handle(method, target.split("?")[0], body, headers.get("connection", "").lower() == "close")
        return None

    def _handle(self, method: str, path: str, raw: bytes, close: bool) -> None:
        if method == "GET" and path == "/stats":
            return self._send(200, dict(self.stats), close=close)
        if method != "POST" or path != "/v1/chat/completions":
            return self._send(404, _error(f"no route {method} {path}"), close=close)
        self.stats["requests"] += 1
        body = json.loads(raw or b"{}")
        head = {"id": "chatcmpl-bench", "created": int(time.time()), "model": body.get("model", ""),
                "system_fingerprint": "fp_bench"}
        if not body.get("stream"):
            usage = {"prompt_tokens": 12, "completion_tokens": len(REPLY), "total_tokens": 12 + len(REPLY)}
            return self._send(200, {**head, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": REPLY}, "logprobs": None,
                 "finish_reason": "stop"}]}, close=close)
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                             b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
        head["object"] = "chat.completion.chunk"

        def delta(d: dict, finish: str | None = None) -> dict:
            return {**head, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]}

        events = [delta({"role": "assistant", "content": ""}), *(delta({"content": c}) for c in REPLY),
                  delta({}, "stop"), "[DONE]"]
        for event in events:     # one write per event, as real servers send them
            text = event if isinstance(event, str) else json.dumps(event, ensure_ascii=False)
            data = f"data: {text}\n\n".encode()
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.transport.write(b"0\r\n\r\n")
        if close:
            self.transport.close()
        return None

    def _send(self, status: int, body: dict, close: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
        closing = b"connection: close\r\n" if close else b""
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"%s\r\n%s" % (status, reason, len(data), closing, data))
        if close:
            self.transport.close()


def _error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def serve_upstream() -> int:
    """Child process: the fake on 127.0.0.1 until stdin closes; its first line on stdout is `port N`."""
    async def main() -> None:
        stats = {"connections": 0, "requests": 0}
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Upstream(stats), "127.0.0.1", 0, backlog=1024)
        print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
        await loop.run_in_executor(None, sys.stdin.buffer.read)     # the parent closed stdin, or died
        server.close()

    asyncio.run(main())
    return 0


def serve_api(upstream: str) -> int:
    """Child process: the router's API in front of `upstream`, until stdin closes."""
    served = serve_router_for(upstream)
    try:
        print(f"port {served.handle.port}", flush=True)
        sys.stdin.buffer.read()
    finally:
        served.stop()
    return 0


def serve_router_for(upstream: str):
    """The API with one provider "up" at `upstream`, built the way the tests and bench/soak.py build it."""
    from configs import ProviderConfig
    from tests.api_helpers import serve_router

    return serve_router([ProviderConfig(name="up", kind="openai", model="m", base_url=upstream)])


# ---- child processes -----------------------------------------------------------------------------------

class Child:
    """A server in a child process (its own session); stopped by closing its stdin, then SIGTERM, SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None, cwd: str | None = None):
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, cwd=cwd, start_new_session=True)

    def port_line(self, timeout: float = START_TIMEOUT) -> int:
        """The port from the child's first `port N` line on stdout."""
        found: list[int] = []

        def read() -> None:
            for line in self.proc.stdout:
                if line.startswith(b"port "):
                    found.append(int(line.split()[1]))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            raise RuntimeError(f"{self.name} did not start within {timeout:g} s: {self.tail()}")
        return found[0]

    def tail(self, chars: int = 1500) -> str:
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-chars:] or "(no output)"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the child so far (/proc/PID/stat)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)      # its own session: any worker it forked goes too
                self.proc.wait(5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.proc.stdout.close()
        self.log.close()


def settle(children: list[Child], timeout: float = 15.0) -> None:
    """Wait (up to `timeout`) until the servers are idle: at most one clock tick of CPU in 0.3 s. LiteLLM
    goes on working for seconds after a burst of calls; that must not land on the next run's calls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = sum(c.cpu_seconds() for c in children)
        time.sleep(0.3)
        if sum(c.cpu_seconds() for c in children) - before <= 1.5 / os.sysconf("SC_CLK_TCK"):
            return


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upstream_stats(root: str) -> dict:
    with urllib.request.urlopen(f"{root}/stats", timeout=5) as r:
        return json.load(r)


# The proxy in the foreground; a thread ends the process when its stdin closes (the bench stopped or died).
LITELLM_MAIN = ("import os, sys, threading\n"
                "threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()\n"
                "from litellm.proxy.proxy_cli import run_server\n"
                "run_server()\n")


def start_litellm(python: str, upstream: str, workdir: str) -> tuple[Child, str, str]:
    """A LiteLLM proxy (one worker, no database, its own master key) with one model "up" -> openai/m at
    `upstream`: (the child, its URL, its key)."""
    port, key = free_port(), f"sk-bench-{secrets.token_hex(16)}"
    config = Path(workdir, "litellm.yaml")
    config.write_text(json.dumps({      # JSON is YAML
        "model_list": [{"model_name": "up", "litellm_params": {"model": "openai/m", "api_base": upstream,
                                                               "api_key": "x"}}],
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False},
    }))
    env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True",      # no fetch of the price list at start
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    for var in ("DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(var, None)
    env["LITELLM_MASTER_KEY"] = key      # it refuses to start without one
    child = Child("litellm", [python, "-c", LITELLM_MAIN, "--config", str(config), "--host", "127.0.0.1",
                              "--port", str(port), "--num_workers", "1"], env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if child.proc.poll() is not None or time.monotonic() > deadline:
            tail = child.tail()
            child.stop()
            raise RuntimeError(f"the LiteLLM proxy did not start: {tail}")
        try:
            with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as r:
                if r.status == 200:
                    return child, url, key
        except OSError:
            time.sleep(0.3)


def litellm_python(arg: str | None) -> str | None:
    """The interpreter that runs the LiteLLM proxy: --litellm-python, else this one when it has litellm."""
    if arg:
        return arg
    return sys.executable if importlib.util.find_spec("litellm") is not None else None


def describe_code() -> str:
    """The router's code as git sees it (commit, and whether the tree has changes), for comparing runs."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- the client side -----------------------------------------------------------------------------------

@dataclass
class Route:
    """One way to the upstream: its base URL, the model name it wants, extra body fields, its key."""

    name: str
    base_url: str
    model: str
    extra_body: dict | None = None
    api_key: str = "x"
    server: Child | None = None     # the process that serves it, for its CPU time

    def client(self):
        import openai
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=30)


def call(client, route: Route, stream: bool) -> tuple[float, float | None, str]:
    """(seconds to the end, seconds to the first text chunk or None, the reply's text) of one call."""
    start = time.perf_counter()
    reply = client.chat.completions.create(model=route.model, messages=MESSAGES, stream=stream,
                                           extra_body=route.extra_body)
    if not stream:
        return time.perf_counter() - start, None, reply.choices[0].message.content or ""
    first, parts = None, []
    for chunk in reply:
        text = chunk.choices[0].delta.content if chunk.choices and chunk.choices[0].delta else None
        if text:
            first = first or time.perf_counter() - start
            parts.append(text)
    return time.perf_counter() - start, first, "".join(parts)


@dataclass
class Series:
    total: list[float] = field(default_factory=list)    # ms to the end
    first: list[float] = field(default_factory=list)    # ms to the first text chunk (streaming)
    texts: set = field(default_factory=set)


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def failure(route: Route, what: str, e: BaseException) -> str:
    return f"{route.name} {what}: {type(e).__name__}: {e}"[:300]


def sequential(routes: list[Route], stream: bool, requests: int, warmup: int, errors: list[str]) -> dict:
    """Each route's Series; the routes take turns call by call, in a rotating order."""
    clients = {r.name: r.client() for r in routes}
    series = {r.name: Series() for r in routes}
    try:
        for i in range(warmup + requests):
            k = i % len(routes)
            for route in routes[k:] + routes[:k]:
                try:
                    total, first, text = call(clients[route.name], route, stream)
                except Exception as e:  # noqa: BLE001 - a benchmark reports failures, it does not stop
                    errors.append(failure(route, "streamed" if stream else "non-streamed", e))
                    continue
                if i >= warmup:
                    s = series[route.name]
                    s.total.append(total * 1000)
                    if first is not None:
                        s.first.append(first * 1000)
                    s.texts.add(text)
    finally:
        for c in clients.values():
            c.close()
    return series


@dataclass
class Load:
    rps: float
    calls: int          # counted calls
    seconds: float
    cpu_ms: float | None = None         # the serving process's CPU per call, warm-ups included
    conns: float = float("nan")         # upstream TCP connections opened per call, warm-ups included


def throughput(route: Route, stream: bool, requests: int, seconds: float, concurrency: int,
               errors: list[str], up_root: str) -> Load:
    """`concurrency` threads, one client each, making up to `requests` calls in all, for up to `seconds`."""
    lock, issued = threading.Lock(), [0]
    ready = threading.Barrier(concurrency + 1)
    done: list[int] = []
    stop_at = [float("inf")]

    def worker() -> None:
        client, n = route.client(), 0
        try:
            for _ in range(WARMUP_PER_CLIENT):     # connect and warm up, off the clock
                call(client, route, stream)
        except Exception as e:  # noqa: BLE001
            errors.append(failure(route, "warm-up", e))
        try:
            ready.wait()
            while time.perf_counter() < stop_at[0]:
                with lock:
                    if issued[0] >= requests:
                        break
                    issued[0] += 1
                try:
                    call(client, route, stream)
                    n += 1
                except Exception as e:  # noqa: BLE001
                    errors.append(failure(route, f"x{concurrency}", e))
        finally:
            done.append(n)
            client.close()

    conns0 = upstream_stats(up_root)["connections"]
    cpu0 = route.server.cpu_seconds() if route.server else None
    threads = [threading.Thread(target=worker, name=f"bench-client-{i}", daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - start
    calls = sum(done)
    all_calls = calls + concurrency * WARMUP_PER_CLIENT
    load = Load(calls / elapsed, calls, elapsed,
                conns=(upstream_stats(up_root)["connections"] - conns0) / all_calls)
    if cpu0 is not None:
        load.cpu_ms = (route.server.cpu_seconds() - cpu0) * 1000 / all_calls
    return load


# ---- the report ----------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def latency_rows(title: str, series: dict, key: str) -> dict[str, tuple[float, float]]:
    """Print one mode's rows; return {route: (added median, added p99)} for the routes other than direct."""
    base = getattr(series["direct"], key)
    b50, b99 = statistics.median(base), percentile(base, 99)
    added = {}
    for i, (name, s) in enumerate(series.items()):
        values = getattr(s, key)
        label = title if i == 0 else ""
        if not values:
            print(f"  {label:<24}{name:<9} no successful calls")
            continue
        m, p = statistics.median(values), percentile(values, 99)
        row = f"  {label:<24}{name:<9}{m:8.2f} {p:8.2f}"
        if name != "direct":
            added[name] = (m - b50, p - b99)
            row += f"   {m - b50:+10.2f} {p - b99:+10.2f}"
        print(row)
    return added


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300,
                        help="sequential calls per path and mode (default 300; throughput: up to twice that)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients for throughput (default 16)")
    parser.add_argument("--warmup", type=int, default=30, help="sequential calls not counted (default 30)")
    parser.add_argument("--seconds", type=float, default=4.0, help="cap on each throughput run (default 4)")
    parser.add_argument("--quick", action="store_true", help="100 sequential calls, 10 warm-up, 2 s runs")
    parser.add_argument("--in-process", action="store_true",
                        help="serve the API in this process (as bench/soak.py does), not in a child process")
    parser.add_argument("--litellm-python", metavar="PYTHON",
                        help="an interpreter with litellm[proxy] installed (default: this one, if it has it)")
    parser.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out even when it is there")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-api", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        return serve_upstream()
    if args.serve_api:
        return serve_api(args.serve_api)
    if args.quick:
        args.requests, args.warmup, args.seconds = min(args.requests, 100), min(args.warmup, 10), 2.0

    import openai
    print(f"router overhead: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"openai {openai.__version__}, code {describe_code()}; "
          f"the API in {'this' if args.in_process else 'a child'} process")

    children: list[Child] = []
    served = None
    workdir = tempfile.mkdtemp(prefix="router-overhead-")
    errors: list[str] = []
    started = time.monotonic()
    try:
        upstream = Child("upstream", [sys.executable, __file__, "--serve-upstream"])
        children.append(upstream)
        up_root = f"http://127.0.0.1:{upstream.port_line()}"
        up_url = f"{up_root}/v1"
        if args.in_process:
            served = serve_router_for(up_url)
            api_url, api = served.url, None
        else:
            api = Child("the router API", [sys.executable, __file__, "--serve-api", up_url], cwd=str(ROOT))
            children.append(api)
            api_url = f"http://127.0.0.1:{api.port_line()}"
        routes = [Route("direct", up_url, "m"),
                  Route("router", f"{api_url}/v1", "up", {"style": "none"}, server=api)]

        python = None if args.no_litellm else litellm_python(args.litellm_python)
        if python is None:
            print("LiteLLM: not importable here, skipped (--litellm-python PATH names an interpreter that "
                  f"has litellm[proxy]); the issue's figures stand in: {LITELLM_ELSEWHERE}")
        else:
            try:
                lite, lite_url, lite_key = start_litellm(python, up_url, workdir)
                children.append(lite)
                version = subprocess.run(
                    [python, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                    capture_output=True, text=True, timeout=60).stdout.strip()
                print(f"LiteLLM: proxy {version} ({python}), one worker")
                routes.append(Route("litellm", f"{lite_url}/v1", "up", api_key=lite_key, server=lite))
            except (RuntimeError, OSError) as e:
                print(f"LiteLLM: skipped, the proxy did not start: {e}")
        time.sleep(1.0)     # the API's TTS warm-up thread imports its normaliser at start: let it finish

        # ---- sequential latency ----
        print(f"\nsequential, one client per path, {args.requests} calls after {args.warmup} warm-up (ms)")
        print(f"  {'':<24}{'':<9}{'median':>8} {'p99':>8}   {'added p50':>10} {'added p99':>10}")
        added: dict[str, dict[str, tuple[float, float]]] = {}
        for stream in (False, True):
            # each proxy in turns with direct calls, apart from the other proxy: LiteLLM works on after
            # each reply (its logging callbacks), which slowed whichever call came next when all three
            # took turns
            pairs = []
            for other in routes[1:]:
                settle(children)
                pairs.append(sequential([routes[0], other], stream, args.requests, args.warmup, errors))
            modes = ([("streaming, end", "streaming, to the end", "total"),
                      ("streaming, first", "streaming, first chunk", "first")] if stream
                     else [("non-streaming", "non-streaming", "total")])
            for mode, title, key in modes:
                added[mode] = {}
                for i, series in enumerate(pairs):
                    added[mode] |= latency_rows(title if i == 0 else "", series, key)
            for series in pairs:
                want = series["direct"].texts
                for name, s in series.items():
                    if s.texts != want or len(want) != 1:
                        errors.append(f"{name} {'streamed' if stream else 'non-streamed'}: the text differs: "
                                      f"{sorted(s.texts)[:2]} against direct's {sorted(want)[:2]}")

        # ---- throughput ----
        n = 2 * args.requests
        print(f"\nthroughput, {args.concurrency} clients, up to {n} calls or {args.seconds:g} s per run")
        loads: dict[str, dict[bool, Load]] = {r.name: {} for r in routes}
        for stream in (False, True):
            for route in routes:
                settle(children)
                loads[route.name][stream] = throughput(route, stream, n, args.seconds, args.concurrency,
                                                       errors, up_root)
        print(f"  {'':<24}" + "".join(f"{r.name:>22}" for r in routes))
        for stream in (False, True):
            cells = []
            for r in routes:
                load = loads[r.name][stream]
                share = "" if r.name == "direct" else f" ({load.rps / loads['direct'][stream].rps:4.0%})"
                cells.append(f"{load.rps:.0f}{share}".rjust(22))
            print(f"  {('streaming' if stream else 'non-streaming') + ' (req/s)':<24}" + "".join(cells))
        cpu = [" / ".join("-" if loads[r.name][s].cpu_ms is None else f"{loads[r.name][s].cpu_ms:.1f}"
                          for s in (False, True)) for r in routes]
        print(f"  {'server CPU ms per call':<24}" + "".join(c.rjust(22) for c in cpu)
              + "   (non-streaming / streaming)")
        conns = [" / ".join(f"{loads[r.name][s].conns:.2f}" for s in (False, True)) for r in routes]
        print(f"  {'upstream conns per call':<24}" + "".join(c.rjust(22) for c in conns))

        # ---- goals ----
        print("\ngoals (issue #9)")
        for mode, by_route in added.items():
            m, p = by_route["router"]
            print(f"  router, {mode:<17} added median {m:+6.2f} ms (<= {GOAL_MEDIAN_MS:g}: "
                  f"{verdict(m <= GOAL_MEDIAN_MS)}), added p99 {p:+6.2f} ms (<= {GOAL_P99_MS:g}: "
                  f"{verdict(p <= GOAL_P99_MS)})")
        for stream in (False, True):
            mode = "streaming" if stream else "non-streaming"
            router = loads["router"][stream].rps
            if "litellm" in loads:
                ratio = router / loads["litellm"][stream].rps
                print(f"  router / LiteLLM throughput, {mode:<14} {ratio:5.2f}x (>= {GOAL_VS_LITELLM:g}x: "
                      f"{verdict(ratio >= GOAL_VS_LITELLM)})")
            elif not stream:
                ratio = router / LITELLM_ELSEWHERE["rps"]
                print(f"  router / LiteLLM throughput, {mode:<14} {ratio:5.2f}x against the issue's "
                      f"{LITELLM_ELSEWHERE['rps']:g} req/s from another machine, indicative only "
                      f"(>= {GOAL_VS_LITELLM:g}x: {verdict(ratio >= GOAL_VS_LITELLM)})")
        if "litellm" in loads:
            m, p = added["non-streaming"]["litellm"]
            print(f"  LiteLLM here, non-streaming: added {m:+.2f} ms median, {p:+.2f} ms p99 (the issue "
                  f"quotes +{LITELLM_ELSEWHERE['p50']:g} / +{LITELLM_ELSEWHERE['p99']:g} ms from elsewhere)")
    finally:
        if served is not None:
            served.stop()
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntook {time.monotonic() - started:.0f} s")
    if errors:
        print(f"the run broke: {len(errors)} problem(s), so its figures are not to be trusted")
        for e in list(dict.fromkeys(errors))[:5]:
            print(f"  {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
