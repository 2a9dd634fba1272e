"""Google Gemini through the google-genai SDK (google-generativeai is end-of-life)."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..errors import (
    CancelledError,
    LLMError,
    MissingKeyError,
    UpstreamError,
)
from ..types import CancelToken, GenerationParams, Message, ProviderStatus
from .base import Provider

try:    # the SDK prefers httpx2 when installed; its exceptions are a separate family
    import httpx2
except ImportError:  # pragma: no cover - depends on the environment
    httpx2 = None

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_HTTPX = tuple(m for m in (httpx, httpx2) if m is not None)
_TIMEOUTS = tuple(m.TimeoutException for m in _HTTPX)
_TRANSPORT = tuple(m.TransportError for m in _HTTPX)
_ROLES = {"user": "user", "assistant": "model"}


class GeminiProvider(Provider):
    kind = "gemini"
    style_mode = "system"   # Gemini follows a system_instruction best

    def __init__(self, config, env=None):
        super().__init__(config, env)
        self._client: genai.Client | None = None
        self._lock = threading.Lock()

    # ---- connection ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.config.base_url or DEFAULT_BASE_URL

    def status(self) -> ProviderStatus:
        """Not ready without a key, even with a custom base_url: the SDK sends no request without one."""
        try:
            self.api_key()
        except MissingKeyError as e:
            return ProviderStatus(False, e.message, e.fix)
        return ProviderStatus(True)

    def client(self) -> genai.Client:
        """The SDK client, created on first use and shared (it is thread-safe)."""
        with self._lock:
            if self._client is None:
                timeout = self.config.timeout
                # HttpOptions.timeout is in milliseconds; no retry_options means the SDK never retries.
                options = types.HttpOptions(base_url=self.base_url,
                                            timeout=int(timeout * 1000) if timeout else None)
                # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI in the environment must not reroute calls.
                self._client = genai.Client(api_key=self.api_key(), vertexai=False, http_options=options)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ---- wire format -----------------------------------------------------------------------

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str]:
        if cancel.cancelled:
            raise CancelledError("generation cancelled")
        system, contents = to_contents(messages)
        response = None
        try:
            response = self.client().models.generate_content_stream(
                model=self.config.model, contents=contents, config=generation_config(system, params))
            for chunk in response:
                if cancel.cancelled:
                    raise CancelledError("generation cancelled")
                text = _chunk_text(chunk)
                if text:
                    yield text
        except (genai_errors.APIError, genai_errors.UnknownApiResponseError, *_TRANSPORT) as e:
            raise self.translate(e) from e
        finally:
            if response is not None:
                response.close()    # unwinds the SDK's generators, which close the HTTP response

    # ---- errors ----------------------------------------------------------------------------

    def translate(self, e: Exception) -> LLMError:
        """The typed error for an SDK or transport exception, without the API key in its text."""
        if isinstance(e, _TIMEOUTS):
            return self.timeout_error()
        if isinstance(e, _TRANSPORT):
            return self.unreachable_error()
        if not isinstance(e, genai_errors.APIError):
            return UpstreamError(f"{self.name}: unreadable answer from {self.base_url}: {self.scrub(str(e))}")
        detail = e.message or str(e.status or "")
        # A bad key comes back as 400 API_KEY_INVALID, not 401.
        bad_key = "API_KEY_INVALID" in str(e.details) or "API key not valid" in detail
        return self.status_error(int(e.code or 502), detail, key_rejected=bad_key)


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
