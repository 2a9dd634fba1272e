"""Google Gemini through the google-genai SDK (google-generativeai is end-of-life)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..errors import LLMError, UpstreamError
from ..types import GenerationParams, Message, StreamEvent
from . import KINDS
from .cloud import CloudProvider
from .transport import async_client
from .wire import backend_message

_ROLES = {"user": "user", "assistant": "model", "tool": "user"}
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
           "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}
_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


class GeminiProvider(CloudProvider):
    kind = "gemini"
    style_mode = "system"   # Gemini follows a system_instruction best
    default_base_url = "https://generativelanguage.googleapis.com"
    # key required even with a custom base_url: without one the SDK sends no request
    sdk_errors = (genai_errors.APIError, genai_errors.UnknownApiResponseError)
    lazy_stream = True      # generate_content_stream connects on the first next()
    honours = KINDS["gemini"].honours

    def new_client(self) -> tuple[genai.Client, Any]:
        http = async_client(self.timeout)
        # HttpOptions.timeout is in milliseconds; no retry_options means the SDK never retries.
        options = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout * 1000),
                                    httpx_async_client=http)
        # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI in the environment must not reroute calls.
        return genai.Client(api_key=self.api_key(), vertexai=False, http_options=options), http.aclose

    async def open_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        system, contents = to_contents(messages)
        return await self.client().aio.models.generate_content_stream(
            model=self.config.model, contents=contents, config=generation_config(system, params))

    def chunk_text(self, chunk: Any) -> str:
        """The answer text of one streamed response; thought summaries are not part of the answer."""
        if not chunk.candidates or chunk.candidates[0].content is None:
            return ""
        return "".join(p.text for p in chunk.candidates[0].content.parts or () if p.text and not p.thought)

    def chunk_finished(self, chunk: Any) -> bool:
        return bool(chunk.candidates) and chunk.candidates[0].finish_reason is not None

    def chunk_event(self, chunk: Any, state: dict) -> StreamEvent | None:
        """Function calls as OpenAI tool-call deltas (numbered across the stream), the finish reason in
        OpenAI's words, and the usage that comes with the last chunk."""
        candidate = chunk.candidates[0] if chunk.candidates else None
        parts = candidate.content.parts or () if candidate is not None and candidate.content else ()
        calls = []
        for call in (part.function_call for part in parts if part.function_call is not None):
            index = state["calls"] = state.get("calls", -1) + 1
            arguments = json.dumps(call.args or {}, ensure_ascii=False)
            call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"     # Gemini's ids are optional
            calls.append({"index": index, "id": call_id, "type": "function",
                          "function": {"name": call.name, "arguments": arguments}})
        reason = candidate.finish_reason if candidate is not None else None
        if reason is None:
            return StreamEvent(tool_calls=tuple(calls)) if calls else None
        finish = _FINISH.get(getattr(reason, "name", str(reason)), "stop")
        finish = "tool_calls" if finish == "stop" and "calls" in state else finish
        meta, usage = chunk.usage_metadata, None
        if meta is not None and meta.prompt_token_count is not None:
            prompt, completion = meta.prompt_token_count, meta.candidates_token_count or 0
            usage = {"prompt_tokens": prompt, "completion_tokens": completion,
                     "total_tokens": meta.total_token_count or prompt + completion}
        return StreamEvent(tool_calls=tuple(calls), finish_reason=finish, usage=usage)

    def translate(self, e: Exception) -> LLMError:
        if not isinstance(e, genai_errors.APIError):
            return UpstreamError(f"{self.name}: unreadable answer from {self.base_url}: {self.scrub(str(e))}")
        detail = backend_message(e.details, e.message or str(e.status or ""))
        # A bad key comes back as 400 API_KEY_INVALID, not 401.
        bad_key = "API_KEY_INVALID" in str(e.details) or "API key not valid" in detail
        headers = getattr(e.response, "headers", None)
        return self.status_error(int(e.code or 502), detail, key_rejected=bad_key, headers=headers)


def to_contents(messages: list[Message]) -> tuple[str | None, list[types.Content]]:
    """(system instruction, contents): system messages joined, assistant turns given role "model".
    Tool calls become function_call parts; tool results function_response parts (one content for a
    run of results, as Gemini wants the answers to parallel calls together)."""
    system = "\n".join(m.content for m in messages if m.role == "system") or None
    names = {c.get("id"): c.get("function", {}).get("name", "") for m in messages for c in m.tool_calls}
    contents: list[types.Content] = []
    for m in messages:
        if m.role == "system":
            continue
        parts = [types.Part(text=m.content)] if m.content and m.role != "tool" else []
        parts += [types.Part(function_call=types.FunctionCall(
            id=c.get("id"), name=c["function"]["name"], args=_arguments(c["function"].get("arguments"))))
            for c in m.tool_calls]
        if m.role == "tool":
            parts = [types.Part(function_response=types.FunctionResponse(
                id=m.tool_call_id, name=names.get(m.tool_call_id, ""), response={"result": m.content}))]
            if contents and contents[-1].parts and contents[-1].parts[0].function_response is not None:
                contents[-1].parts.extend(parts)
                continue
        contents.append(types.Content(role=_ROLES[m.role], parts=parts or [types.Part(text="")]))
    return system, contents


def _arguments(raw: Any) -> dict:
    """A tool call's JSON arguments as the dict Gemini takes (a non-object is wrapped, never lost)."""
    try:
        value = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"arguments": raw}
    return value if isinstance(value, dict) else {"arguments": value}


def generation_config(system: str | None, params: GenerationParams) -> types.GenerateContentConfig:
    """The GenerateContentConfig for these params; unset ones are left to Gemini's defaults. OpenAI's
    stop, seed, penalties, JSON mode / schema and function tools map onto Gemini's own."""
    extra = params.extra or {}
    fmt = extra.get("response_format") or {}
    json_reply = fmt.get("type") in ("json_object", "json_schema")
    return types.GenerateContentConfig(
        system_instruction=system,
        temperature=params.temperature,     # 0 is greedy
        top_p=params.top_p,
        top_k=params.top_k or None,         # 0 means "off" in our params; Gemini rejects it
        max_output_tokens=params.max_new_tokens,
        stop_sequences=list(params.stop) if params.stop else None,
        seed=params.seed,
        frequency_penalty=params.frequency_penalty,
        presence_penalty=params.presence_penalty,
        response_mime_type="application/json" if json_reply else None,     # with the schema when one is given
        response_json_schema=(fmt.get("json_schema") or {}).get("schema") if json_reply else None,
        **_tools(extra.get("tools") or (), extra.get("tool_choice", "auto")),
    )


def _tools(tools: Any, choice: Any) -> dict[str, Any]:
    """OpenAI's function tools and tool_choice as Gemini's function declarations and calling mode."""
    if not tools:
        return {}
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    functions = [t["function"] for t in tools]
    declarations = [types.FunctionDeclaration(name=f["name"], description=f.get("description"),
                                              parameters_json_schema=f.get("parameters")) for f in functions]
    mode = types.FunctionCallingConfig(mode="ANY" if named else _MODES.get(choice, "AUTO"),
                                       allowed_function_names=[named] if named else None)
    return {"tools": [types.Tool(function_declarations=declarations)],
            "tool_config": types.ToolConfig(function_calling_config=mode),
            # the SDK must never run functions itself: the client does, and sends the results back
            "automatic_function_calling": types.AutomaticFunctionCallingConfig(disable=True)}
