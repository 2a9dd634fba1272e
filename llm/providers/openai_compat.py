"""ChatGPT and every OpenAI-compatible server (vLLM, TGI, Ollama, llama.cpp) through `base_url`."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import openai

from ..errors import CancelledError, LLMError, UpstreamError
from ..types import CancelToken, GenerationParams, Message
from .base import Provider

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Local servers ignore the key, but the SDK refuses to build a client without one.
PLACEHOLDER_KEY = "sk-no-key-required"


class OpenAIProvider(Provider):
    kind = "openai"
    style_mode = "system"

    def __init__(self, config, env=None):
        super().__init__(config, env)
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()

    # ---- connection ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        # Explicit, so the SDK never picks up OPENAI_BASE_URL behind the config's back.
        return self.config.base_url or DEFAULT_BASE_URL

    def client(self) -> openai.OpenAI:
        """The SDK client, created on first use and shared (it is thread-safe)."""
        with self._lock:
            if self._client is None:
                key = self.api_key(required=not self.config.base_url) or PLACEHOLDER_KEY
                timeout = self.config.timeout if self.config.timeout is not None else openai.NOT_GIVEN
                # max_retries=0: the router owns retries; a silent SDK retry would hide latency.
                self._client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout,
                                             max_retries=0)
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
        response = None
        try:
            response = self.client().chat.completions.create(**self.request_body(messages, params),
                                                             stream=True)
            for chunk in response:
                if cancel.cancelled:
                    raise CancelledError("generation cancelled")
                text = _delta_text(chunk)
                if text:
                    yield text
        except openai.OpenAIError as e:
            raise self.translate(e) from e
        finally:
            if response is not None:
                response.close()    # closes the HTTP stream, so the server stops generating

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions arguments for these messages and sampling params."""
        body: dict[str, Any] = {"model": self.config.model, "messages": [m.as_dict() for m in messages]}
        # temperature 0 is sent as is: OpenAI and vLLM treat it as greedy decoding.
        for name, value in (("temperature", params.temperature), ("top_p", params.top_p),
                            ("max_tokens", params.max_new_tokens)):
            if value is not None:
                body[name] = value
        extra = {"top_k": params.top_k, "repetition_penalty": params.repetition_penalty}
        extra = {k: v for k, v in extra.items() if v is not None}
        if self.config.base_url and extra:
            body["extra_body"] = extra    # vLLM's sampling extensions; api.openai.com rejects them
        return body

    # ---- errors ----------------------------------------------------------------------------

    def translate(self, e: openai.OpenAIError) -> LLMError:
        """The typed error for an SDK exception, without the API key in its text."""
        if isinstance(e, openai.APITimeoutError):
            return self.timeout_error()
        if isinstance(e, openai.APIConnectionError):
            return self.unreachable_error()
        if isinstance(e, openai.APIStatusError):
            return self.status_error(e.status_code, _backend_message(e))
        return UpstreamError(f"{self.name}: {self.scrub(getattr(e, 'message', None) or str(e))}")


def _delta_text(chunk: Any) -> str:
    """The text of one stream chunk; "" for role-only, usage-only or filter-result chunks."""
    if not chunk.choices or chunk.choices[0].delta is None:
        return ""
    return chunk.choices[0].delta.content or ""


def _backend_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return e.message
