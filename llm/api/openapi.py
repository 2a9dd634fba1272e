"""The OpenAPI document (`/openapi.json`, `/docs`): what each route really takes and gives back.

FastAPI sees neither the request bodies (the routes parse them themselves, strictly) nor the responses
(plain dicts, event streams, and errors made in `errors.py`), so this module states them: the request
bodies from their pydantic models, every route's 200 (JSON, and `text/event-stream` for the two POST
routes), each error status a route can give with its body (the seed shape on `/`, OpenAI's on `/v1`),
the response headers, and the bearer key. tests/test_openapi.py runs a schema fuzzer (schemathesis)
against a served app, so a route that drifts from this document fails the suite.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .schemas import ChatCompletionRequest, SeedRequest

REF = "#/components/schemas/{model}"
SCHEME = "bearerAuth"


# ---- response bodies (documentation only: the routes build plain dicts) ------------------------

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


class SeedErrorDetail(_Doc):
    type: str = Field(examples=["invalid_request_error", "unknown_provider", "provider_not_ready"])
    message: str


class SeedError(_Doc):
    """Every error of `POST /`: `status` repeats the HTTP status."""

    status: int = Field(ge=400, le=599)
    error: SeedErrorDetail


class SeedErrorEvent(_Doc):
    """A failure after the stream began (the status line was already sent): the stream's last event."""

    error: SeedErrorDetail


class OpenAIErrorDetail(_Doc):
    message: str
    type: str = Field(examples=["invalid_request_error", "unknown_provider", "rate_limited"])
    param: str | None = Field(description="the request field at fault, when there is one")
    code: str | None


class OpenAIError(_Doc):
    """Every error of `/v1`, in OpenAI's shape (an invalid request is a 400, as OpenAI answers)."""

    error: OpenAIErrorDetail


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


class OpenAIErrorEvent(_Doc):
    """A failure after the stream began (the status line was already sent): the stream's last event."""

    error: OpenAIErrorDetail


class ProviderStatus(_Doc):
    ready: bool = Field(description="whether the provider could answer now")
    reason: str = Field(description="why not, when it is not ready")
    fix: str = Field(description="what makes it ready (a variable to export, a download to run)")
    cooldown_s: float = Field(ge=0, description="> 0 while it is skipped after failures")
    last_error: str = Field(description="the failure that started the cooldown")


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


RESPONSE_MODELS = (SeedReply, SeedDoneEvent, SentenceEvent, SeedError, SeedErrorEvent, OpenAIError,
                   ChatCompletion, ChatCompletionChunk, OpenAIErrorEvent, ModelList, Model, Health)
REQUEST_MODELS = {"/": SeedRequest, "/v1/chat/completions": ChatCompletionRequest}

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
}

# A rule the request models enforce in a validator, which their JSON schema does not show (a key the
# model's own schema already has is left alone, so the rule can move into the model).
VALIDATOR_RULES = {("SeedRequest", "prompt"): {"pattern": r"\S"}}     # some non-whitespace text


# ---- the document --------------------------------------------------------------------------

def openapi_document(app: FastAPI) -> dict:
    """The app's OpenAPI document (made once, then cached on the app)."""
    if app.openapi_schema is None:
        app.openapi_schema = build(app)
    return app.openapi_schema


def build(app: FastAPI) -> dict:
    api_key = bool(getattr(getattr(app.state, "ctx", None), "api_key", None))
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas: dict[str, Any] = {}
    for model in REQUEST_MODELS.values():
        body = model.model_json_schema(ref_template=REF)
        _merge(schemas, body.pop("$defs", {}))
        _merge(schemas, {model.__name__: body})
    for (name, field), rule in VALIDATOR_RULES.items():
        prop = schemas.get(name, {}).get("properties", {}).get(field)
        if prop is not None:
            prop.update({k: v for k, v in rule.items() if k not in prop})
    _, defs = models_json_schema([(m, "validation") for m in RESPONSE_MODELS], ref_template=REF)
    _merge(schemas, defs["$defs"])
    doc["components"] = {"schemas": schemas, "securitySchemes": {SCHEME: {
        "type": "http", "scheme": "bearer",
        "description": "The server's API key (LLM_API_KEY / --api-key), as `Authorization: Bearer <key>`. "
                       "Needed by every route but /health, and only when the server has a key."}}}

    for path, item in doc["paths"].items():
        for op in item.values():
            op["responses"] = _responses(path, api_key)
            if path in REQUEST_MODELS:
                op["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": REF.format(model=REQUEST_MODELS[path].__name__)},
                    "examples": REQUEST_EXAMPLES[path]}}}
            op["security"] = [{SCHEME: []}] if api_key and path != "/health" else []
    return doc


def _merge(into: dict, new: dict) -> None:
    for name, schema in new.items():
        if name in into and into[name] != schema:
            raise ValueError(f"two different schemas are both named {name!r}")
        into[name] = schema


def _ref(name: str) -> dict:
    return {"$ref": REF.format(model=name)}


HEADERS = {"X-Request-ID": {"description": "this request's id, as the server log shows it", "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"}}}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait, when the cause said so", "required": False,
                               "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
SSE_HEADERS = {"Cache-Control": {"description": "`no-cache` on an event stream", "required": False,
                                 "schema": {"type": "string"}},
               "X-Accel-Buffering": {"description": "`no` on an event stream: a proxy passes each event on",
                                     "required": False, "schema": {"type": "string"}}}
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
UPSTREAM = (429, 499, 502, 503, 504)


def _statuses(path: str, api_key: bool) -> list[int]:
    statuses = [500]
    if api_key and path != "/health":
        statuses.append(401)
    if path in REQUEST_MODELS:
        statuses += [400, 404, 413, 415, *UPSTREAM]
        if path == "/":
            statuses.append(422)
    elif path == "/v1/models/{model_id}":
        statuses.append(404)
    return sorted(statuses)


def _responses(path: str, api_key: bool) -> dict:
    ok_models = {"/": "SeedReply", "/v1/chat/completions": "ChatCompletion", "/v1/models": "ModelList",
                 "/v1/models/{model_id}": "Model", "/health": "Health"}
    content = {"application/json": {"schema": _ref(ok_models[path])}}
    headers = dict(HEADERS)
    if path in REQUEST_MODELS:
        events, what = {"/": (["SentenceEvent", "SeedDoneEvent", "SeedErrorEvent"],
                              "one `SentenceEvent` per speakable sentence, then a `SeedDoneEvent`"),
                        "/v1/chat/completions": (["ChatCompletionChunk", "OpenAIErrorEvent"],
                                                 "`ChatCompletionChunk`s, then `data: [DONE]`")}[path]
        json_data = {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"anyOf": [_ref(e) for e in events]}}
        if path == "/v1/chat/completions":
            json_data = {"anyOf": [{"const": "[DONE]"}, json_data]}
        # OpenAPI 3.1 has no keyword for one event of a stream (3.2 adds itemSchema): the convention, which
        # schemathesis follows, is that `schema` describes each event (its `data` field holds the JSON).
        content["text/event-stream"] = {"schema": {
            "type": "object", "required": ["data"], "properties": {"data": json_data},
            "description": f"With `\"stream\": true`, server-sent events (this schema is one event): {what}. "
                           "A failure after the first event ends the stream with an error event instead."}}
        headers |= SSE_HEADERS
    out: dict[str, Any] = {"200": {"description": "The reply" if path in REQUEST_MODELS else "OK",
                                   "headers": headers, "content": content}}
    error = "OpenAIError" if path.startswith("/v1/") else "SeedError"
    for status in _statuses(path, api_key):
        schema = _ref(error)
        if error == "SeedError":    # `status` repeats the HTTP status
            schema = {"allOf": [schema, {"properties": {"status": {"const": status}}}]}
        headers = dict(HEADERS)
        if status == 401:
            headers["WWW-Authenticate"] = {"required": True, "schema": {"type": "string", "const": "Bearer"}}
        if status in (429, 503):
            headers |= RETRY_AFTER
        out[str(status)] = {"description": ERRORS[status], "headers": headers,
                            "content": {"application/json": {"schema": schema}}}
    return out
