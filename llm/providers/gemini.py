"""Google Gemini through the google-genai SDK (google-generativeai is end-of-life)."""

from __future__ import annotations

from typing import Any

from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..errors import (
    LLMError,
    UpstreamError,
)
from ..types import GenerationParams, Message
from .base import CloudProvider, backend_message

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_ROLES = {"user": "user", "assistant": "model"}


class GeminiProvider(CloudProvider):
    kind = "gemini"
    style_mode = "system"   # Gemini follows a system_instruction best
    default_base_url = DEFAULT_BASE_URL
    # key required even with a custom base_url: without one the SDK sends no request
    sdk_errors = (genai_errors.APIError, genai_errors.UnknownApiResponseError)
    lazy_stream = True      # generate_content_stream connects on the first next()

    def make_client(self, http: Any) -> genai.Client:
        # HttpOptions.timeout is in milliseconds; no retry_options means the SDK never retries.
        options = types.HttpOptions(base_url=self.base_url, timeout=int(self.timeout * 1000),
                                    httpx_client=http)
        # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI in the environment must not reroute calls.
        return genai.Client(api_key=self.api_key(), vertexai=False, http_options=options)

    def open_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        system, contents = to_contents(messages)
        return self.client().models.generate_content_stream(
            model=self.config.model, contents=contents, config=generation_config(system, params))

    def chunk_text(self, chunk: Any) -> str:
        return _chunk_text(chunk)

    def chunk_finished(self, chunk: Any) -> bool:
        return bool(chunk.candidates) and chunk.candidates[0].finish_reason is not None

    def translate(self, e: Exception) -> LLMError:
        """The typed error for an SDK exception, without the API key in its text."""
        if not isinstance(e, genai_errors.APIError):
            return UpstreamError(f"{self.name}: unreadable answer from {self.base_url}: {self.scrub(str(e))}")
        detail = backend_message(e.details, e.message or str(e.status or ""))
        # A bad key comes back as 400 API_KEY_INVALID, not 401.
        bad_key = "API_KEY_INVALID" in str(e.details) or "API key not valid" in detail
        headers = getattr(e.response, "headers", None)
        return self.status_error(int(e.code or 502), detail, key_rejected=bad_key, headers=headers)


def to_contents(messages: list[Message]) -> tuple[str | None, list[types.Content]]:
    """(system instruction, contents): system messages joined, assistant turns given role "model"."""
    system = "\n".join(m.content for m in messages if m.role == "system") or None
    contents = [types.Content(role=_ROLES[m.role], parts=[types.Part(text=m.content)])
                for m in messages if m.role != "system"]
    return system, contents


def generation_config(system: str | None, params: GenerationParams) -> types.GenerateContentConfig:
    """The GenerateContentConfig for these params; unset ones are left to Gemini's defaults."""
    return types.GenerateContentConfig(
        system_instruction=system,
        temperature=params.temperature,     # 0 is greedy
        top_p=params.top_p,
        top_k=params.top_k or None,         # 0 means "off" in our params; Gemini rejects it
        max_output_tokens=params.max_new_tokens,
    )


def _chunk_text(chunk: Any) -> str:
    """The answer text of one streamed response; thought summaries are not part of the answer."""
    if not chunk.candidates or chunk.candidates[0].content is None:
        return ""
    return "".join(p.text for p in chunk.candidates[0].content.parts or () if p.text and not p.thought)
