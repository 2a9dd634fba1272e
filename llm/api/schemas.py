"""Request bodies of the HTTP API: read with a size cap, parsed strictly (exact types, no unknown fields)."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.requests import ClientDisconnect

from ..speech import MAX_SECONDS
from ..types import bounds


class ApiError(Exception):
    """A problem with the HTTP request itself; `param` names the offending field when there is one."""

    def __init__(self, status: int, type: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message, self.param = status, type, message, param


async def read_body(request: Request, model: type[BaseModel], limit: int) -> Any:
    """The body as `model`: JSON, at most `limit` bytes (a 413 before parsing), strictly validated: UTF-8,
    an object, and no NaN, Infinity, overflowing numbers or lone surrogates."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"Content-Type {ctype!r} is not supported: "
                                                      "send JSON with Content-Type: application/json")
    too_big = ApiError(413, "payload_too_large", f"the body is larger than {limit} bytes")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_big
    body = bytearray()
    try:
        async for part in request.stream():    # counts chunked bodies, which have no length
            body += part
            if len(body) > limit:
                raise too_big
    except ClientDisconnect as e:
        raise ApiError(400, "client_disconnected", "the client went away while sending the body") from e
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, "invalid_encoding", f"the body is not valid UTF-8 (byte {e.start})") from e
    try:
        data = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {e.msg} at line {e.lineno} "
                                            f"column {e.colno}") from e
    except (RecursionError, ValueError) as e:   # nesting too deep; an integer with too many digits
        raise ApiError(400, "invalid_json", f"the body is not usable JSON: {e}") from e
    _reject_surrogates(data)
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request_error", "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e) from e


def _reject_constant(name: str) -> Any:
    raise ApiError(422, "invalid_request_error", f"{name} is not a valid number: use a finite number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):    # 1e999 overflows to inf
        raise ApiError(422, "invalid_request_error", f"{literal[:20]} is out of range: use a finite number")
    return value


def _reject_surrogates(data: Any) -> None:
    """Lone surrogates ("\\ud800") decode in Python but cannot be encoded: refuse them up front."""
    stack = [data]  # not recursive: json.loads accepts nesting deeper than a recursive walk could follow
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ApiError(400, "invalid_encoding",
                               "a string holds a lone surrogate (an invalid \\ud800-\\udfff escape)") from e
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def validation_error(e: ValidationError) -> ApiError:
    """A pydantic error as one readable 422 (the input values are left out: they may be huge)."""
    errors = e.errors(include_url=False, include_input=False)
    problems = []
    for err in errors[:3]:
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("function-", "list[")))
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"{where or 'body'}: {message}")
    param = ".".join(map(str, errors[0]["loc"])) if errors and errors[0]["loc"] else None
    return ApiError(422, "invalid_request_error", "; ".join(problems), param=param)


_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(BaseModel):
    """One `{"type": "text", "text": ...}` block of a message's content."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class HistoryMessage(BaseModel):
    # Chat UIs attach extra keys (metadata, options) to history messages: ignore rather than refuse.
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]


HistoryPair = Annotated[list[str | None], Field(min_length=2, max_length=2)]
Style = Literal["short", "none"]


def _whole(value: Any) -> Any:
    """50.0 (what json.dumps makes of a float that holds a count) is 50; 50.5 stays and is refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A count of tokens or characters: a whole number, sent as 50 or 50.0.
Count = Annotated[int, Field(**bounds("max_new_tokens")), BeforeValidator(_whole)]
Whole = Annotated[int, BeforeValidator(_whole)]
NonEmpty = Annotated[str, Field(min_length=1)]


class SeedRequest(BaseModel):
    """The Linly-Talker API body, with the optional fields this server adds."""

    model_config = _STRICT
    # the pattern is for /docs: `_prompt_has_text` enforces it, with a clearer message
    prompt: str = Field(min_length=1, json_schema_extra={"pattern": r"\S"})
    history: list[HistoryPair | HistoryMessage] | None = None
    max_length: Count | None = None
    top_p: float | None = Field(None, **bounds("top_p"))
    temperature: float | None = Field(None, **bounds("temperature"))
    provider: str | None = Field(None, min_length=1)
    system: str | None = None
    style: Style | None = None
    stream: bool = False
    max_seconds: float | None = Field(None, gt=0, le=MAX_SECONDS)  # the answer budget in seconds of speech
    max_chars: Count | None = None     # or in characters
    emotions: bool | None = None    # an "emotion" per sentence event (style.emotion_set)
    knowledge: bool | None = None   # false: answer without the knowledge (documents and FAQ)
    # the server keeps the history: 1 to 128 characters, no control characters
    session: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    # of the session's last reply, only this many sentences were heard (the avatar was stopped)
    heard: Whole | None = Field(None, ge=0)

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain non-whitespace text")
        return value


class HeardRequest(BaseModel):
    """`POST /sessions/{id}/heard`: of the last reply, only this many sentences were heard."""

    model_config = _STRICT
    sentences: Whole = Field(ge=0)


_OPEN = ConfigDict(extra="allow", strict=True)     # passed on as sent: newer keys must survive


class ToolCallFunction(BaseModel):
    model_config = _OPEN
    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call an assistant message made earlier in the conversation."""

    model_config = _OPEN
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


_NONEMPTY_CALLS = {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}}
_HAS_CONTENT = {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}}
_MESSAGE_RULES = {"allOf": [    # _text_parts_only and _shape_fits_role, for the OpenAPI document
    {"properties": {"content": {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}}},
    {"if": {"properties": {"role": {"const": "tool"}}},
     "then": {"required": ["tool_call_id"],
              "properties": {"tool_call_id": {"type": "string", "minLength": 1}}}},
    {"if": {"properties": {"role": {"enum": ["system", "developer", "user"]}}}, "then": _HAS_CONTENT},
    {"if": {"properties": {"role": {"const": "assistant"}}},
     "then": {"anyOf": [_HAS_CONTENT, _NONEMPTY_CALLS]}, "else": {"not": _NONEMPTY_CALLS}},
]}


class ChatMessage(BaseModel):
    # OpenAI clients may send `name` and similar keys we have no use for: ignore them.
    model_config = ConfigDict(extra="ignore", strict=True, json_schema_extra=_MESSAGE_RULES)
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else ():
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part type {part.get('type')!r} is not supported: send text parts "
                                 '({"type": "text", "text": ...}) or a string')
        return value

    @model_validator(mode="after")
    def _shape_fits_role(self) -> ChatMessage:
        calls_only = self.role == "assistant" and self.tool_calls
        if self.content is None and not calls_only and self.role != "tool":
            raise ValueError(f"a {self.role} message needs content (only an assistant message with "
                             "tool_calls may have none)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message can carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content or ())

    def as_history(self) -> dict[str, Any]:
        """The message as the router takes it (`types.normalize_history`); no content stays none."""
        out: dict[str, Any] = {"role": self.role}
        if self.content is not None:
            out["content"] = self.text()
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump(exclude_none=True) for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDef(BaseModel):
    model_config = _OPEN
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(BaseModel):
    model_config = _OPEN
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(BaseModel):
    model_config = _STRICT
    name: str = Field(min_length=1)


class NamedToolChoice(BaseModel):
    model_config = _STRICT
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(BaseModel):
    model_config = _OPEN
    name: str = Field(min_length=1, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(**_STRICT, json_schema_extra={
        "if": {"properties": {"type": {"const": "json_schema"}}},
        "then": {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}},
        "else": {"properties": {"json_schema": {"type": "null"}}}})
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only then")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat completion body. Unknown fields are refused, as OpenAI does."""

    model_config = _STRICT
    model: str = Field("default", min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, **bounds("temperature"))
    top_p: float | None = Field(None, **bounds("top_p"))
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # n's maximum is in the document only, so that n=2 gets the message of `_answerable`
    n: Annotated[int, Field(ge=1, json_schema_extra={"maximum": 1}), BeforeValidator(_whole)] | None = None
    stop: NonEmpty | Annotated[list[NonEmpty], Field(min_length=1, max_length=4)] | None = None
    seed: Whole | None = None
    frequency_penalty: float | None = Field(None, **bounds("frequency_penalty"))
    presence_penalty: float | None = Field(None, **bounds("presence_penalty"))
    # From here to web_search_options: handed to the providers as sent (`passed_on`); a provider that cannot
    # honour one refuses the request, naming it. `stop`, `seed` and the penalties are sampling params.
    logit_bias: dict[str, Annotated[int, Field(ge=-100, le=100), BeforeValidator(_whole)]] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20), BeforeValidator(_whole)] | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    modalities: list[str] | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    style: Style | None = None      # not OpenAI's: send these with the SDK's extra_body
    max_seconds: float | None = Field(None, gt=0, le=MAX_SECONDS)
    knowledge: bool | None = None
    session: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")

    @model_validator(mode="after")
    def _answerable(self) -> ChatCompletionRequest:
        if self.n is not None and self.n > 1:
            raise ValueError(f"n={self.n}: this server returns one choice per request; send n=1 or "
                             "make n requests")
        last = self.messages[-1]
        if last.role not in ("user", "tool"):
            raise ValueError("the last message must have role 'user' (or 'tool', answering a tool call)")
        if last.role == "user" and not last.text().strip():
            raise ValueError("the last user message must contain text")
        if self.tool_choice is not None and not isinstance(self.tool_choice, str) and not any(
                t.function.name == self.tool_choice.function.name for t in self.tools or ()):
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        return self

    def passed_on(self) -> dict[str, Any]:
        """The fields for GenerationParams.extra, as the client sent them."""
        sent = self.model_dump(mode="json", include=PASSED_ON, exclude_unset=True, by_alias=True)
        return {k: v for k, v in sent.items() if v is not None}


_FIELDS = list(ChatCompletionRequest.model_fields)
PASSED_ON = set(_FIELDS[_FIELDS.index("logit_bias"):_FIELDS.index("web_search_options") + 1])
