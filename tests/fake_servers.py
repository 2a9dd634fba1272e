"""Loopback HTTP servers that speak the real wire formats of OpenAI, Gemini and ZhipuAI.

The providers talk to them through the real SDKs (only `base_url` changes), so a test exercises
the same bytes a cloud backend would send: JSON replies, SSE streams, error bodies, disconnects.

    with FakeOpenAIServer(["你好"], chunk_delay=0.01) as fake:   # or FakeGeminiServer, FakeZhipuAIServer
    with FakeOllamaServer(models=["qwen2.5:0.5b"]) as fake:     # /api/tags and /api/version too
        ...  # point ProviderConfig.base_url at fake.base_url; then inspect fake.requests, fake.chunks_sent

Replies: a string is a text answer (one stream event per character, or `chunks` pieces; cut to `max_tokens`
characters with finish reason "length"); `tool_calls("name", '{"arg": 1}', ...)` is an answer that calls tools.
An OpenAI stream sends the usage chunk when the request asks for it (stream_options.include_usage).

Faults: `faults=[...]` scripts what each request meets, in order (the last one repeats; "ok" is a
normal answer):
    "html"          200 with an HTML page instead of an event stream
    "empty"         a well-formed stream with its end marker but no text
    "truncate"      half the text, then the body ends cleanly with no finish reason / [DONE]
    "drop"          half the text, then the connection is cut mid-body
    "hang"          the request is read and never answered (until the client goes away)
    "stall"         half the text, then silence (until the client goes away)
    "linger"        the whole stream, [DONE] included, then the body is never ended (until the client goes away)
    "burst"         the whole stream in one write (one chunk of the chunked body), as a fast server's
                    events reach a reader that fell behind
    "status:503"    that HTTP error in the backend's own error shape
    "status:429:2"  a 429 with `Retry-After: 2`
    "detail:400"    a FastAPI/vLLM-style error body {"detail": "..."}
`connections` counts the TCP connections accepted (keep-alive reuse keeps it low).
`hanging` counts requests parked in "hang"/"stall" right now: 0 again once their clients left.
"""

from __future__ import annotations

import json
import re
import select
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import urlsplit

DEFAULT_REPLY = "你好，我是数字人。"
_MESSAGES = {
    400: "Invalid request: a parameter is out of range.",
    401: "Incorrect API key provided: {key}.",   # OpenAI echoes the key: providers must never repeat it
    403: "Permission denied for this project.",
    404: "The model `{model}` does not exist or you do not have access to it.",
    429: "Rate limit reached for requests.",
    500: "The server had an error while processing your request.",
    503: "The model is overloaded. Please try again later.",
}
Event = tuple[Any, bool]    # (SSE data payload, whether it carries reply text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256    # the default backlog of 5 drops the SYNs of a burst: ~1 s waits


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive and chunked streams, like the real backends
    timeout = 30                    # idle keep-alive connections end on their own

    def setup(self) -> None:
        super().setup()
        self.server.fake._connections.add(self.connection)
        self.server.fake.connections += 1

    def finish(self) -> None:
        self.server.fake._connections.discard(self.connection)
        super().finish()

    def do_POST(self) -> None:
        self.server.fake._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output stays readable."""


class _FakeServer:
    """The shared HTTP machinery; subclasses supply routes and JSON shapes.

    `requests` holds every JSON body received, plus "_path" (with the query) and "_headers" (lower-cased
    names). `chunks_sent` counts the text-carrying stream events written, so a test can prove that a
    client which stopped reading also closed the stream.
    """

    prefix = ""             # path part of base_url
    sse_end = "\n\n"        # event terminator
    handler_class = _Handler
    bind_port = 0           # the port to bind; 0: any free one

    def __init__(self, replies: list[str] | None = None, *, chunk_delay: float = 0.0,
                 chunks: int | None = None, fail_status: int | None = None, fail_body: dict | None = None,
                 faults: list[str] | None = None, tls: ssl.SSLContext | None = None):
        self._replies = list(replies) if replies else [DEFAULT_REPLY]
        self.tls = tls      # a server-side context: serve https
        self._faults = list(faults or ["ok"])
        self.hanging = 0
        self.chunk_delay, self.chunks = chunk_delay, chunks
        self.fail_status, self.fail_body = fail_status, fail_body
        self.requests: list[dict] = []
        self.chunks_sent = 0
        self.connections = 0    # TCP connections accepted, ever
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started: use it as a context manager")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}{self.prefix}"

    def start(self) -> None:
        self._stopping.clear()
        self._httpd = _Server(("127.0.0.1", self.bind_port), self.handler_class)
        self._httpd.fake = self
        if self.tls:
            self._httpd.socket = self.tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()        # streaming handlers stop at their next chunk
        self._httpd.shutdown()
        for conn in list(self._connections):   # wake handlers parked on idle keep-alive sockets
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- one request -------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append({**body, "_path": handler.path, "_headers": headers})
        route = self._route(urlsplit(handler.path).path, body)
        if route is None:
            return self._send_json(handler, 404, self.error_body(404, f"no such endpoint: {handler.path}"))
        model, stream = route
        refusal = self.refusal(body)
        if refusal is not None:
            return self._send_json(handler, *refusal)
        if self.fail_status:
            bearer = headers.get("authorization", "").removeprefix("Bearer ")
            key = bearer or headers.get("x-goog-api-key", "")
            message = _MESSAGES.get(self.fail_status, "Upstream failure.").format(key=key, model=model)
            body = self.fail_body or self.error_body(self.fail_status, message)
            return self._send_json(handler, self.fail_status, body)
        fault = self._next_fault()
        if fault != "ok":
            return self._inject(handler, fault, model)
        reply = self._next_reply()
        if isinstance(reply, ToolCalls):
            if stream:
                return self._send_stream(handler, self._tool_events(model, reply.calls, body))
            return self._send_json(handler, 200, self._tool_completion(model, reply.calls))
        text, finish = self.cut(reply, self._max_tokens(body))
        pieces = _split(text, self.chunks)
        if stream:
            return self._send_stream(handler, self._events(model, pieces, finish, body))
        self._stopping.wait(self.chunk_delay * len(pieces))   # a non-streamed reply takes as long
        self._send_json(handler, 200, self._completion(model, text, finish))

    def _next_fault(self) -> str:
        with self._lock:
            return self._faults.pop(0) if len(self._faults) > 1 else self._faults[0]

    def _inject(self, handler: _Handler, fault: str, model: str) -> None:
        kind, _, arg = fault.partition(":")
        if kind == "status":
            status, _, retry_after = arg.partition(":")
            message = _MESSAGES.get(int(status), "Upstream failure.").format(key="", model=model)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return self._send_json(handler, int(status), self.error_body(int(status), message), headers)
        if kind == "detail":
            return self._send_json(handler, int(arg), {"detail": f"upstream says no ({arg})"})
        if kind == "html":
            data = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"
            handler.send_response(200)
            handler.send_header("Content-Type", "text/html")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return None
        if kind == "hang":
            return self._park(handler)
        events = list(self._events(model, _split(self._next_reply(), self.chunks)))
        texts = [i for i, (_, is_text) in enumerate(events) if is_text]
        if kind == "burst":
            return self._send_stream(handler, iter(events), burst=True)
        if kind == "linger":
            self._send_stream(handler, iter(events), end=False)
            return self._park(handler)
        if kind == "empty":
            events = [e for e in events if not e[1]]
        elif kind in ("truncate", "drop", "stall"):
            events = events[:texts[len(texts) // 2]]   # the events before the second half of the text
        self._send_stream(handler, iter(events), end=kind == "truncate" or kind == "empty")
        if kind == "stall":
            self._park(handler)
        handler.close_connection = True
        return None

    def _park(self, handler: _Handler) -> None:
        """Hold the request open, saying nothing, until the client leaves or the server stops."""
        with self._lock:
            self.hanging += 1
        try:
            while not self._stopping.wait(0.01) and not _client_gone(handler.connection):
                pass
        finally:
            with self._lock:
                self.hanging -= 1
            handler.close_connection = True

    def _next_reply(self) -> str | ToolCalls:
        with self._lock:
            return self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]

    def _send_json(self, handler: _Handler, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _send_stream(self, handler: _Handler, events: Iterator[Event], end: bool = True,
                     burst: bool = False) -> None:
        """SSE over chunked encoding; stops as soon as the client has gone. `end=False` leaves the
        chunked body unfinished (the caller then parks or cuts the connection); `burst` sends every
        event in one write."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        if burst:
            data = "".join(f"data: {p if isinstance(p, str) else json.dumps(p, ensure_ascii=False)}{self.sse_end}"
                           for p, _ in events)
            events = iter([(data, False)])
        try:
            for payload, is_text in events:
                if is_text and self.chunk_delay:
                    self._stopping.wait(self.chunk_delay)
                if self._stopping.is_set() or _client_gone(handler.connection):
                    handler.close_connection = True
                    return
                data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
                _write_chunk(handler, (data if burst else f"data: {data}{self.sse_end}").encode())
                if is_text:
                    with self._lock:
                        self.chunks_sent += 1
            if end:
                handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()
        except OSError:     # the client closed between our check and the write
            handler.close_connection = True

    # ---- per backend -------------------------------------------------------------------------

    def _route(self, path: str, body: dict) -> tuple[str, bool] | None:
        """(model, streamed) for a known endpoint, None for an unknown one."""
        raise NotImplementedError

    def _completion(self, model: str, text: str, finish: str = "stop") -> dict:
        raise NotImplementedError

    def _events(self, model: str, pieces: list[str], finish: str = "stop", body: dict | None = None
                ) -> Iterator[Event]:
        raise NotImplementedError

    def _tool_events(self, model: str, calls: list[tuple[str, str]], body: dict) -> Iterator[Event]:
        raise NotImplementedError

    def _tool_completion(self, model: str, calls: list[tuple[str, str]]) -> dict:
        raise NotImplementedError

    def _max_tokens(self, body: dict) -> int | None:
        return body.get("max_tokens") or body.get("max_completion_tokens")

    def refusal(self, body: dict) -> tuple[int, dict] | None:
        """(status, error body) for a request this backend refuses for its content; None to answer it."""
        return None

    def cut(self, reply: str, limit: int | None) -> tuple[str, str]:
        """The reply within `limit` tokens (here one token is one character), and its finish reason."""
        return (reply[:limit], "length") if limit is not None and len(reply) > limit else (reply, "stop")

    def error_body(self, status: int, message: str) -> dict:
        """The backend's own error JSON (also handy for building a `fail_body`)."""
        raise NotImplementedError


class FakeOpenAIServer(_FakeServer):
    """POST /v1/chat/completions, as api.openai.com, vLLM and Ollama answer it."""

    prefix = "/v1"

    def _route(self, path: str, body: dict) -> tuple[str, bool] | None:
        if path != f"{self.prefix}/chat/completions":
            return None
        return body.get("model", ""), bool(body.get("stream"))

    def _completion(self, model: str, text: str, finish: str = "stop") -> dict:
        return {**_openai_head(model, "chat.completion"), "usage": _usage(text),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}]}

    def _events(self, model: str, pieces: list[str], finish: str = "stop", body: dict | None = None
                ) -> Iterator[Event]:
        head = _openai_head(model, "chat.completion.chunk")
        yield {**head, "choices": []}, False     # Azure-style filter results: a chunk with no choices
        yield {**head, "choices": [_delta({"role": "assistant", "content": ""})]}, False
        for piece in pieces:
            choice = _delta({"content": piece})
            if (body or {}).get("logprobs"):    # one token per piece, with a made-up log probability
                choice["logprobs"] = {"content": [{"token": piece, "logprob": -0.25, "bytes": list(piece.encode()),
                                                   "top_logprobs": []}], "refusal": None}
            yield {**head, "choices": [choice]}, True
        yield {**head, "choices": [_delta({}, finish)]}, False
        yield from self._usage_chunk(head, "".join(pieces), body)
        yield "[DONE]", False

    def _tool_events(self, model: str, calls: list[tuple[str, str]], body: dict) -> Iterator[Event]:
        """As OpenAI streams tool calls: id, type and name first, then the arguments in pieces."""
        head = _openai_head(model, "chat.completion.chunk")
        yield {**head, "choices": [_delta({"role": "assistant", "content": None})]}, False
        for i, (name, arguments) in enumerate(calls):
            first = {"index": i, "id": f"call_{i}_{name}", "type": "function",
                     "function": {"name": name, "arguments": ""}}
            yield {**head, "choices": [_delta({"tool_calls": [first]})]}, True
            for piece in _split(arguments, 3):
                yield {**head, "choices": [_delta({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})]}, True
        yield {**head, "choices": [_delta({}, "tool_calls")]}, False
        yield from self._usage_chunk(head, "".join(a for _, a in calls), body)
        yield "[DONE]", False

    def _tool_completion(self, model: str, calls: list[tuple[str, str]]) -> dict:
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": f"call_{i}_{name}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(calls)]}
        return {**_openai_head(model, "chat.completion"), "usage": _usage("".join(a for _, a in calls)),
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}

    def _usage_chunk(self, head: dict, text: str, body: dict | None) -> Iterator[Event]:
        if ((body or {}).get("stream_options") or {}).get("include_usage"):
            yield {**head, "choices": [], "usage": _usage(text)}, False

    def error_body(self, status: int, message: str) -> dict:
        kind = "server_error" if status >= 500 else {429: "requests"}.get(status, "invalid_request_error")
        code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(status)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class FakeLlamaCppServer(FakeOpenAIServer):
    """llama-cpp-python's server (0.3.x) where it differs from OpenAI, as seen in front of a real one:

    - a streamed tool call repeats its index, id, type and function name in every delta;
    - a request its pydantic model refuses (`"content": null`, a `response_format` other than text or
      json_object) is a 500 whose message is FastAPI's validation error text, with the server's file path;
    - no usage chunk: `stream_options` is ignored;
    - `max_tokens` counts tokens, which here are words (about what a real tokenizer makes of English)."""

    APP = "/opt/venv/lib/python3.11/site-packages/llama_cpp/server/app.py"

    def refusal(self, body: dict) -> tuple[int, dict] | None:
        errors = [{"type": "string_type", "loc": ("body", "messages", i, "content"),
                   "msg": "Input should be a valid string", "input": None}
                  for i, m in enumerate(body.get("messages") or []) if "content" in m and m["content"] is None]
        kind = (body.get("response_format") or {}).get("type", "text")
        if kind not in ("text", "json_object"):
            errors.append({"type": "literal_error", "loc": ("body", "response_format", "type"),
                           "msg": "Input should be 'text' or 'json_object'", "input": kind})
        if not errors:
            return None
        text = f"{len(errors)} validation error{'s' if len(errors) > 1 else ''}:\n"
        text += "".join(f"  {e}\n" for e in errors)
        text += f'\n  File "{self.APP}", line 408, in create_chat_completion\n    POST /v1/chat/completions'
        return 500, {"error": {"message": text, "type": "internal_server_error", "param": None, "code": None}}

    def _tool_events(self, model: str, calls: list[tuple[str, str]], body: dict) -> Iterator[Event]:
        head = _openai_head(model, "chat.completion.chunk")
        yield {**head, "choices": [_delta({"role": "assistant", "content": None, "function_call": None,
                                           "tool_calls": None})]}, False
        for i, (name, arguments) in enumerate(calls):
            for piece in _split(arguments, 3):
                call = {"index": i, "id": f"call__{i}_{name}", "type": "function",
                        "function": {"name": name, "arguments": piece}}
                yield {**head, "choices": [_delta({"role": None, "content": None, "tool_calls": [call],
                                                   "function_call": {"name": name, "arguments": piece}})]}, True
        yield {**head, "choices": [_delta({}, "tool_calls")]}, False
        yield "[DONE]", False

    def _usage_chunk(self, head: dict, text: str, body: dict | None) -> Iterator[Event]:
        return iter(())

    def cut(self, reply: str, limit: int | None) -> tuple[str, str]:
        words = re.findall(r"\s*\S+", reply)
        return ("".join(words[:limit]), "length") if limit is not None and len(words) > limit else (reply, "stop")


class _OllamaHandler(_Handler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.fake._serve_get(self)


class FakeOllamaServer(FakeOpenAIServer):
    """Ollama: GET /api/tags (the pulled models) and /api/version, POST /v1/chat/completions as
    FakeOpenAIServer answers it.

        with FakeOllamaServer(models=["qwen2.5:0.5b"]) as fake:    # fake.host: a value for $OLLAMA_HOST

    `models` (names, or whole /api/tags entries) may change while it runs: a pull, an `ollama rm`.
    `port` binds that port (a server started later where a router already looks); `gate`: an Event
    that /api/tags waits for (30 s at most), to hold a probe mid-way. `gets` lists the GET paths asked."""

    handler_class = _OllamaHandler
    version = "0.6.8"

    def __init__(self, replies: list[str] | None = None, *, models: list[str | dict] | tuple = ("qwen2.5:0.5b",),
                 port: int = 0, gate: threading.Event | None = None, **kw: Any):
        super().__init__(replies, **kw)
        self.models = list(models)
        self.bind_port, self.gate = port, gate
        self.gets: list[str] = []

    @property
    def host(self) -> str:
        """Where it listens, as $OLLAMA_HOST says it (host:port, no scheme)."""
        return self.base_url.removeprefix("http://").removesuffix(self.prefix)

    def _serve_get(self, handler: _Handler) -> None:
        path = urlsplit(handler.path).path
        with self._lock:
            self.gets.append(path)
        if path == "/api/version":
            return self._send_json(handler, 200, {"version": self.version})
        if path == "/api/tags":
            if self.gate is not None:
                self.gate.wait(30)
            return self._send_json(handler, 200, {"models": [_ollama_tag(m) for m in list(self.models)]})
        return self._send_json(handler, 404, {"error": "404 page not found"})


class FakeZhipuAIServer(FakeOpenAIServer):
    """POST /api/paas/v4/chat/completions: OpenAI-shaped JSON and SSE, ZhipuAI-shaped errors."""

    prefix = "/api/paas/v4"
    _codes = {400: "1214", 401: "1000", 403: "1220", 404: "1211", 429: "1302", 500: "500"}

    def _events(self, model: str, pieces: list[str], finish: str = "stop", body: dict | None = None
                ) -> Iterator[Event]:
        head = {"id": "fake-zhipu", "created": int(time.time()), "model": model}
        for piece in pieces:
            yield {**head, "choices": [_delta({"role": "assistant", "content": piece})]}, True
        yield {**head, "choices": [_delta({"role": "assistant", "content": ""}, finish)],
               "usage": _usage("".join(pieces))}, False
        yield "[DONE]", False

    def _tool_events(self, model: str, calls: list[tuple[str, str]], body: dict) -> Iterator[Event]:
        """ZhipuAI sends each tool call whole, in the finishing chunk."""
        head = {"id": "fake-zhipu", "created": int(time.time()), "model": model}
        tool_calls = [{"index": i, "id": f"call_{i}_{name}", "type": "function",
                       "function": {"name": name, "arguments": arguments}} for i, (name, arguments) in enumerate(calls)]
        yield {**head, "choices": [_delta({"role": "assistant", "tool_calls": tool_calls}, "tool_calls")],
               "usage": _usage("")}, True
        yield "[DONE]", False

    def error_body(self, status: int, message: str) -> dict:
        return {"error": {"code": self._codes.get(status, str(status)), "message": message}}


class FakeGeminiServer(_FakeServer):
    """POST /{version}/models/{model}:generateContent and :streamGenerateContent?alt=sse."""

    sse_end = "\r\n\r\n"
    _path = re.compile(r"^/(v1[a-z0-9]*)/models/([^/:]+):(generateContent|streamGenerateContent)$")
    _statuses = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

    def _route(self, path: str, body: dict) -> tuple[str, bool] | None:
        match = self._path.match(path)
        return (match[2], match[3] == "streamGenerateContent") if match else None

    def _completion(self, model: str, text: str, finish: str = "stop") -> dict:
        return _gemini_chunk(model, text, "MAX_TOKENS" if finish == "length" else "STOP")

    def _events(self, model: str, pieces: list[str], finish: str = "stop", body: dict | None = None
                ) -> Iterator[Event]:
        for i, piece in enumerate(pieces):
            yield _gemini_chunk(model, piece, counted="".join(pieces[:i + 1])), True
        yield _gemini_chunk(model, "", "MAX_TOKENS" if finish == "length" else "STOP", "".join(pieces)), False

    def _tool_events(self, model: str, calls: list[tuple[str, str]], body: dict) -> Iterator[Event]:
        yield self._tool_completion(model, calls), True

    def _tool_completion(self, model: str, calls: list[tuple[str, str]]) -> dict:
        parts = [{"functionCall": {"name": name, "args": json.loads(arguments)}} for name, arguments in calls]
        chunk = _gemini_chunk(model, "", "STOP")
        chunk["candidates"][0]["content"]["parts"] = parts
        return chunk

    def _max_tokens(self, body: dict) -> int | None:
        return (body.get("generationConfig") or {}).get("maxOutputTokens")

    def error_body(self, status: int, message: str) -> dict:
        status_name = self._statuses.get(status, "UNKNOWN")
        return {"error": {"code": status, "message": message, "status": status_name}}


class ToolCalls:
    """A scripted answer that calls tools instead of replying with text."""

    def __init__(self, *pairs: str):
        self.calls = list(zip(pairs[::2], pairs[1::2], strict=True))    # (name, JSON arguments)


def tool_calls(*pairs: str) -> ToolCalls:
    """`tool_calls("get_weather", '{"city": "北京"}')`: a reply that calls these tools."""
    return ToolCalls(*pairs)


FAKES = {"openai": FakeOpenAIServer, "gemini": FakeGeminiServer, "zhipuai": FakeZhipuAIServer}


def refused_url(prefix: str = "") -> str:
    """A loopback URL where nothing listens: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{prefix}"


# ---- helpers -------------------------------------------------------------------------------------

def _split(text: str, n: int | None) -> list[str]:
    """One piece per character, or `n` nearly equal pieces."""
    if n is None or n >= len(text):
        return list(text) or [""]
    bounds = [round(i * len(text) / n) for i in range(n + 1)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def _client_gone(sock: socket.socket) -> bool:
    """True when the peer closed: the socket reads as EOF (a client never pipelines mid-stream)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):   # ValueError: a TLS socket cannot peek; it had something to say
        return True


def _write_chunk(handler: _Handler, data: bytes) -> None:
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _ollama_tag(model: str | dict) -> dict:
    """One entry of Ollama's /api/tags, as a real server lists a pulled model."""
    if isinstance(model, dict):
        return model
    family = model.split(":")[0].rstrip("0123456789.") or "llama"
    return {"name": model, "model": model, "modified_at": "2025-01-01T00:00:00Z", "size": 397821319,
            "digest": "a8b0c5157701" + "0" * 52,
            "details": {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                        "parameter_size": "494.03M", "quantization_level": "Q4_K_M"}}


def _usage(text: str) -> dict:
    return {"prompt_tokens": 8, "completion_tokens": len(text), "total_tokens": 8 + len(text)}


def _openai_head(model: str, obj: str) -> dict:
    return {"id": "chatcmpl-fake", "object": obj, "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_fake"}


def _delta(delta: dict, finish: str | None = None) -> dict:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


def _gemini_chunk(model: str, text: str, finish: str | None = None, counted: str | None = None) -> dict:
    """One Gemini response; its usageMetadata counts `counted` (Gemini's counts are running totals)."""
    candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": model, "responseId": "fake-gemini",
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": len(counted or text),
                              "totalTokenCount": 8 + len(counted or text)}}
