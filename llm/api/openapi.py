"""The OpenAPI document (`/openapi.json`, `/docs`): what each route really takes and gives back.

Stated here because FastAPI sees neither the bodies (the routes parse them) nor the replies (plain dicts,
event streams, `errors.py`); tests/test_openapi.py fuzzes a served app against it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from .schemas import ChatCompletionRequest, HeardRequest, SeedRequest

REF = "#/components/schemas/{model}"
SCHEME = "bearerAuth"


# The response bodies, for the document only: the routes build plain dicts.
class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timings(_Doc):
    """Milliseconds from the request to the first text, the first whole sentence, and the end."""

    ttft_ms: float
    first_sentence_ms: float
    total_ms: float


class SentenceEvent(_Doc):
    """One speakable sentence: as displayed, and as a TTS engine should read it ("25℃" as "二十五摄氏度")."""

    sentence: str
    speech: str
    emotion: str | None = Field(None, description="only when the request asked for emotions (null: none)")


class Source(_Doc):
    """What the knowledge gave a reply: a passage of a document, or the FAQ question it matched."""

    source: str = Field(description="the document's path in the knowledge folder, or the FAQ file's name")
    kind: Literal["doc", "faq"]
    text: str = Field(description="the passage, or the FAQ question")
    score: float = Field(description="how well it matches the question, 0 to 1")


Sources = Annotated[list[Source], Field(description="best first; empty when the knowledge gave nothing")]


Pair = Annotated[list[str], Field(min_length=2, max_length=2)]
Stamp = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$",
                             examples=["2024-05-01 12:00:00"])]


class SeedReply(_Doc):
    """The whole reply of `POST /` (without `"stream": true`)."""

    response: str
    history: list[Pair] = Field(description="the request's history as [user, bot] pairs, plus this turn")
    status: Literal[200]
    time: Stamp
    provider: str = Field(description="the provider that answered (a fallback, when the asked one failed)")
    timings: Timings
    sources: Sources
    session: str | None = Field(None, description="the session the turn was kept in, when one was given")
    sentences: list[SentenceEvent]


class SeedDoneEvent(_Doc):
    """The last event of a seed stream: the reply as `SeedReply` has it, without `sentences`."""

    done: Literal[True]
    response: str
    history: list[Pair]
    status: Literal[200]
    time: Stamp
    provider: str
    timings: Timings
    sources: Sources
    session: str | None = None


class SessionMessage(_Doc):
    role: Literal["user", "assistant"]
    content: str = Field(description="a reply as far as it was heard (sentences delivered), never marked")
    at: float = Field(description="when, in Unix time")
    provider: str | None = Field(None, description="the provider of a reply")
    cut: Literal["stopped", "hung_up", "barged_in", "error"] | None = Field(
        None, description="why a reply ended before its end: its content is what was heard")


class SessionHistory(_Doc):
    """A conversation the server keeps, oldest message first."""

    session: str
    messages: list[SessionMessage]


class SessionHeard(_Doc):
    session: str
    reply: str = Field(description="the last reply as the history keeps it now")


class SessionDeleted(_Doc):
    session: str
    deleted: Literal[True]


class SeedErrorDetail(_Doc):
    type: str = Field(examples=["invalid_request_error", "unknown_provider", "provider_not_ready"])
    message: str


class SeedError(_Doc):
    """Every error of `POST /`: `status` repeats the HTTP status."""

    status: int = Field(ge=400, le=599)
    error: SeedErrorDetail


class OpenAIErrorDetail(_Doc):
    message: str
    type: str = Field(examples=["invalid_request_error", "unknown_provider", "rate_limited"])
    param: str | None = Field(description="the request field at fault, when there is one")
    code: str | None


class OpenAIError(_Doc):
    """Every error of `/v1`, in OpenAI's shape (an invalid request is a 400, as OpenAI answers)."""

    error: OpenAIErrorDetail


SeedErrorEvent, OpenAIErrorEvent = (
    create_model(f"{kind}ErrorEvent", __base__=_Doc, error=(detail, ...), __doc__="A failure after the "
                 "stream began (the status line was already sent): the stream's last event.")
    for kind, detail in (("Seed", SeedErrorDetail), ("OpenAI", OpenAIErrorDetail)))


class ReplyToolCallFunction(_Doc):
    name: str
    arguments: str = Field(description="the arguments as a JSON text")


class ReplyToolCall(_Doc):
    id: str
    type: Literal["function"]
    function: ReplyToolCallFunction


class AssistantMessage(_Doc):
    role: Literal["assistant"]
    content: str | None = Field(description="null when the reply is only tool calls")
    tool_calls: list[ReplyToolCall] | None = None


FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


class Logprobs(_Doc):
    """The upstream's token log probabilities, as it sent them (with `"logprobs": true`)."""

    content: list[dict[str, Any]]
    refusal: None = None


class Choice(_Doc):
    index: int = Field(ge=0)
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: Logprobs | None = None


class Usage(_Doc):
    """Token counts: the upstream's, else counted here."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatCompletion(_Doc):
    """OpenAI's chat completion (without `"stream": true`), plus this server's `timings`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str = Field(description="the provider that answered")
    choices: list[Choice] = Field(min_length=1, max_length=1)
    usage: Usage
    timings: Timings
    sources: Sources


class ToolCallDeltaFunction(_Doc):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Doc):
    index: int = Field(ge=0)
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallDeltaFunction | None = None


class Delta(_Doc):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(_Doc):
    index: int = Field(ge=0)
    delta: Delta
    finish_reason: FinishReason | None
    logprobs: Logprobs | None = None


class ChatCompletionChunk(_Doc):
    """One event of a streamed chat completion (OpenAI's shape); a usage-only chunk has no choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice] = Field(max_length=1)
    usage: Usage | None = None
    sources: Sources | None = Field(None, description="on the chunk with the finish_reason")


class ReplicaStatus(_Doc):
    url: str = Field(description="the server's base_url")
    cooldown_s: float = Field(ge=0, description="> 0 while it is skipped after failures")
    last_error: str = Field(description="the failure that started the cooldown")
    busy: int = Field(ge=0, description="requests it is answering or queueing now")
    conversations: int = Field(ge=0, description="sessions whose next turn goes to it")


class ProviderStatus(_Doc):
    ready: bool = Field(description="whether the provider could answer now")
    reason: str = Field(description="why not, when it is not ready")
    fix: str = Field(description="what makes it ready (a variable to export, a download to run)")
    cooldown_s: float = Field(ge=0, description="> 0 while it is skipped after failures")
    last_error: str = Field(description="the failure that started the cooldown")
    replicas: list[ReplicaStatus] = Field(default_factory=list,
                                          description="a provider with several base_urls: each server")


class Model(ProviderStatus):
    """A provider in OpenAI's model shape, with its readiness."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[Model]


class Health(_Doc):
    status: Literal["ok"]
    providers: dict[str, ProviderStatus]


REQUEST_MODELS = {"/": SeedRequest, "/v1/chat/completions": ChatCompletionRequest,
                  "/sessions/{session_id}/heard": HeardRequest}

# Shown in /docs, and sent first by a schema fuzzer: a whole reply and an event stream for each POST route.
REQUEST_EXAMPLES = {
    "/": {"reply": {"summary": "A short spoken reply", "value": {"prompt": "今天天气怎么样？"}},
          "stream": {"summary": "Sentence events, with emotions",
                     "value": {"prompt": "Tell me about the moon. 25.5℃ is warm.", "stream": True,
                               "emotions": True, "history": [["你好", "你好！"]]}}},
    "/v1/chat/completions": {
        "reply": {"summary": "A chat completion", "value": {
            "model": "default", "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "What is the capital of France?"}]}},
        "stream": {"summary": "Streamed chunks, the usage, then [DONE]", "value": {
            "messages": [{"role": "user", "content": "Count to three. One. Two."}], "stream": True,
            "stream_options": {"include_usage": True}}}},
    "/sessions/{session_id}/heard": {
        "heard": {"summary": "Two sentences were heard", "value": {"sentences": 2}}},
}

UPSTREAM = (429, 499, 502, 503, 504)
# Per path: the model of its 200, and the errors it gives besides 500 (and 401, when the server has a key).
ROUTES = {"/": (SeedReply, (400, 404, 413, 415, 422, *UPSTREAM)), "/v1/models": (ModelList, ()),
          "/v1/chat/completions": (ChatCompletion, (400, 404, 413, 415, *UPSTREAM)),
          "/v1/models/{model_id}": (Model, (404,)), "/health": (Health, ()),
          "/sessions/{session_id}": ({"get": SessionHistory, "delete": SessionDeleted}, (404, 422, 503)),
          "/sessions/{session_id}/heard": (SessionHeard, (400, 404, 413, 415, 422, 503))}
# The POST routes' event streams: their events, and what they hold.
STREAMS = {"/": ([SentenceEvent, SeedDoneEvent, SeedErrorEvent],
                 "one `SentenceEvent` per speakable sentence, then a `SeedDoneEvent`"),
           "/v1/chat/completions": ([ChatCompletionChunk, OpenAIErrorEvent],
                                    "`ChatCompletionChunk`s, then `data: [DONE]`")}
ERRORS = {
    400: "Bad request: the body is not UTF-8 or not JSON, or the client left while sending it. On /v1 also "
         "what `/` answers with 422: an invalid field (OpenAI's status for that)",
    401: "Missing or wrong API key: send `Authorization: Bearer <key>`",
    404: "Unknown provider (model)",
    413: "The body is larger than the server's limit",
    415: "The Content-Type is not JSON",
    422: "A field is missing, of the wrong type, out of range or unknown",
    429: "The provider is rate limited",
    499: "The client closed the connection before the reply (only the server log shows it)",
    500: "A bug: see the server log",
    502: "The provider failed",
    503: "The provider is not ready (missing key, weights or SDK) or is cooling down after failures",
    504: "The provider timed out",
}
HEADERS = {"X-Request-ID": {"description": "this request's id, as the server log shows it", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}}}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait, when the cause said so", "required": False,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
SSE_HEADERS = {"Cache-Control": {"description": "`no-cache` on an event stream", "required": False,
                                 "schema": {"type": "string"}},
               "X-Accel-Buffering": {"description": "`no` on an event stream: a proxy passes each event on",
                                     "required": False, "schema": {"type": "string"}}}


def openapi_document(app: FastAPI) -> dict:
    """The app's OpenAPI document (made once, then cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    api_key = bool(getattr(getattr(app.state, "ctx", None), "api_key", None))
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    models = (*REQUEST_MODELS.values(), *(m for ok, _ in ROUTES.values() for m in _oks(ok)), SeedError,
              OpenAIError,
              *(event for events, _ in STREAMS.values() for event in events))
    schemas = models_json_schema([(m, "validation") for m in models], ref_template=REF)[1]["$defs"]
    doc["components"] = {"schemas": schemas, "securitySchemes": {SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "The server's API key (LLM_API_KEY / --api-key), as `Authorization: Bearer <key>`. "
                       "Needed by every route but /health, and only when the server has a key."}}}
    for path, item in doc["paths"].items():
        keyed = api_key and path != "/health"
        for method, op in item.items():
            op["responses"] = _responses(path, method, keyed)
            if path in REQUEST_MODELS:
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": _ref(REQUEST_MODELS[path]), "examples": REQUEST_EXAMPLES[path]}}}
            op["security"] = [{SCHEME: []}] if keyed else []
    app.openapi_schema = doc
    return doc


def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": REF.format(model=model.__name__)}


def _oks(ok) -> tuple:
    return tuple(ok.values()) if isinstance(ok, dict) else (ok,)


def _responses(path: str, method: str, keyed: bool) -> dict:
    ok, errors = ROUTES[path]
    ok = ok[method] if isinstance(ok, dict) else ok
    content, headers = {"application/json": {"schema": _ref(ok)}}, dict(HEADERS)
    if path in STREAMS:
        events, what = STREAMS[path]
        data = {"type": "string", "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_ref(e) for e in events]}}
        if path == "/v1/chat/completions":
            data = {"anyOf": [{"const": "[DONE]"}, data]}
        # OpenAPI 3.1 has no keyword for one event of a stream (3.2 adds itemSchema): the convention, which
        # schemathesis follows, is that `schema` describes each event (its `data` field holds the JSON).
        content["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"], "properties": {"data": data},
            "description": f"With `\"stream\": true`, server-sent events (this schema is one event): {what}. "
                           "A failure after the first event ends the stream with an error event instead."}}
        headers |= SSE_HEADERS
    out: dict[str, Any] = {"200": {"description": "The reply" if path in STREAMS else "OK",
                                   "headers": headers, "content": content}}
    for status in sorted({500, *errors, *((401,) if keyed else ())}):
        schema = _ref(OpenAIError)
        if not path.startswith("/v1/"):     # the seed API's `status` repeats the HTTP status
            schema = {"allOf": [_ref(SeedError), {"properties": {"status": {"const": status}}}]}
        headers = dict(HEADERS)
        if status == 401:
            headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string", "const": "Bearer"}}
        if status in (429, 503):
            headers |= RETRY_AFTER
        out[str(status)] = {"description": ERRORS[status], "headers": headers,
                            "content": {"application/json": {"schema": schema}}}
    return out
