"""ChatGPT and every OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp) through `base_url`."""

from __future__ import annotations

from typing import Any

import httpx2
import openai

from ..errors import LLMError, UpstreamError
from ..types import GenerationParams, Message
from .base import CloudProvider, backend_message, delta_event, delta_finished, delta_text

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers ignore the key, but the SDK refuses to build a client without one.
PLACEHOLDER_KEY = "sk-no-key-required"


class OpenAIProvider(CloudProvider):
    kind = "openai"
    style_mode = "system"
    default_base_url = DEFAULT_BASE_URL
    key_required = False        # vLLM, Ollama and llama.cpp servers need no key
    sdk_errors = (openai.OpenAIError,)
    def unsupported(self, params: GenerationParams) -> str | None:
        return None     # every OpenAI field is passed on as sent: the upstream decides

    def make_client(self, http: httpx2.Client) -> openai.OpenAI:
        key = self.api_key(required=not self.config.base_url) or PLACEHOLDER_KEY
        return openai.OpenAI(api_key=key, base_url=self.base_url, timeout=self.timeout, max_retries=0,
                             http_client=http)

    def open_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        return self.client().chat.completions.create(**self.request_body(messages, params), stream=True)

    def chunk_text(self, chunk: Any) -> str:
        return delta_text(chunk)

    def chunk_finished(self, chunk: Any) -> bool:
        return delta_finished(chunk)

    def chunk_event(self, chunk: Any, state: dict) -> Any:
        return delta_event(chunk)

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions arguments for these messages and params. The OpenAI fields beyond
        sampling (tools, response_format, logit_bias, ...) go in `extra_body`, as the client sent them."""
        body: dict[str, Any] = {"model": self.config.model, "messages": [m.as_dict() for m in messages]}
        # temperature 0 is sent as is: OpenAI and vLLM treat it as greedy decoding.
        for name, value in (("temperature", params.temperature), ("top_p", params.top_p),
                            ("max_tokens", params.max_new_tokens), ("seed", params.seed),
                            ("frequency_penalty", params.frequency_penalty),
                            ("presence_penalty", params.presence_penalty),
                            ("stop", list(params.stop) if params.stop else None)):
            if value is not None:
                body[name] = value
        if self.config.stream_usage:    # the usage chunk (stream_options.include_usage)
            body["stream_options"] = {"include_usage": True}
        extra = dict(params.extra or {})
        if self.config.base_url:    # vLLM's sampling extensions; api.openai.com rejects them
            extra |= {k: v for k, v in (("top_k", params.top_k),
                                        ("repetition_penalty", params.repetition_penalty)) if v is not None}
        if extra:
            body["extra_body"] = extra
        return body

    # ---- errors ----------------------------------------------------------------------------

    def translate(self, e: openai.OpenAIError) -> LLMError:
        """The typed error for an SDK exception, without the API key in its text."""
        if isinstance(e, openai.APITimeoutError):
            return self.timeout_error()
        if isinstance(e, openai.APIConnectionError):
            return self.unreachable_error()
        if isinstance(e, openai.APIStatusError):
            return self.status_error(e.status_code, backend_message(_json_or(e.response, e.body), e.message),
                                     headers=e.response.headers)
        return UpstreamError(f"{self.name}: {self.scrub(getattr(e, 'message', None) or str(e))}")


def _json_or(response: Any, default: Any) -> Any:
    """The error response's JSON (the SDK's `body` drops all but `error`), else `default`."""
    try:
        return response.json()
    except Exception:   # noqa: BLE001 - any unreadable body: use what the SDK kept
        return default
