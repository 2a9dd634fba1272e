"""ZhipuAI GLM models through the zhipuai SDK (POST {base}/chat/completions, OpenAI-shaped SSE)."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import httpx
import zhipuai
from zhipuai.core import NOT_GIVEN

from ..errors import (
    CancelledError,
    LLMError,
    MissingKeyError,
    UpstreamError,
)
from ..types import CancelToken, GenerationParams, Message, ProviderStatus
from .base import Provider

DEFAULT_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
GREEDY_TEMPERATURE = 0.01   # ZhipuAI rejects temperature 0; greedy is do_sample=False instead


class ZhipuAIProvider(Provider):
    kind = "zhipuai"
    style_mode = "system"

    def __init__(self, config, env=None):
        super().__init__(config, env)
        self._client: zhipuai.ZhipuAI | None = None
        self._lock = threading.Lock()

    # ---- connection ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        # Explicit, so the SDK never picks up ZHIPUAI_BASE_URL behind the config's back.
        return self.config.base_url or DEFAULT_BASE_URL

    def status(self) -> ProviderStatus:
        """Not ready without a key, even with a custom base_url: the SDK refuses to start without one."""
        try:
            self.api_key()
        except MissingKeyError as e:
            return ProviderStatus(False, e.message, e.fix)
        return ProviderStatus(True)

    def client(self) -> zhipuai.ZhipuAI:
        """The SDK client, created on first use and shared (it is thread-safe)."""
        with self._lock:
            if self._client is None:
                timeout = self.config.timeout if self.config.timeout is not None else NOT_GIVEN
                # The SDK sends the "id.secret" key as a bearer token (its JWT signing is off by default).
                # max_retries=0: the router owns retries.
                self._client = zhipuai.ZhipuAI(api_key=self.api_key(), base_url=self.base_url,
                                               timeout=timeout, max_retries=0)
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
        except (zhipuai.ZhipuAIError, httpx.TransportError) as e:
            raise self.translate(e) from e
        finally:
            if response is not None:
                response.response.close()   # the SDK's stream has no close(); its HTTP response does

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions arguments; top_k and repetition_penalty have no ZhipuAI equivalent."""
        body: dict[str, Any] = {"model": self.config.model, "messages": [m.as_dict() for m in messages]}
        if params.greedy:
            body.update(temperature=GREEDY_TEMPERATURE, do_sample=False)
        elif params.temperature is not None:
            body["temperature"] = params.temperature   # the SDK clamps it into ZhipuAI's (0, 1)
        if params.top_p is not None:
            body["top_p"] = params.top_p               # the SDK turns 1.0, which ZhipuAI rejects, into 0.99
        if params.max_new_tokens is not None:
            body["max_tokens"] = params.max_new_tokens
        return body

    # ---- errors ----------------------------------------------------------------------------

    def translate(self, e: Exception) -> LLMError:
        """The typed error for an SDK or transport exception, without the API key in its text."""
        if isinstance(e, (zhipuai.APITimeoutError, httpx.TimeoutException)):
            return self.timeout_error()
        if isinstance(e, (zhipuai.APIConnectionError, httpx.TransportError)):
            return self.unreachable_error()
        if isinstance(e, zhipuai.APIStatusError):
            return self.status_error(e.status_code, _backend_message(e))
        return UpstreamError(f"{self.name}: {self.scrub(getattr(e, 'message', None) or str(e))}")


def _delta_text(chunk: Any) -> str:
    if not chunk.choices or chunk.choices[0].delta is None:
        return ""
    return chunk.choices[0].delta.content or ""


def _backend_message(e: zhipuai.APIStatusError) -> str:
    """ZhipuAI's own error text ({"error": {"code", "message"}}), else the SDK's summary."""
    try:
        return str(e.response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(e)
