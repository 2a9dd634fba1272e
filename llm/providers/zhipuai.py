"""ZhipuAI GLM models through the zhipuai SDK (POST {base}/chat/completions, OpenAI-shaped SSE)."""

from __future__ import annotations

from typing import Any

import httpx
import zhipuai
from zhipuai.core import NOT_GIVEN

from ..errors import (
    LLMError,
    UpstreamError,
)
from ..types import GenerationParams, Message
from .base import CloudProvider, delta_text

DEFAULT_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
GREEDY_TEMPERATURE = 0.01   # ZhipuAI rejects temperature 0; greedy is do_sample=False instead


class ZhipuAIProvider(CloudProvider):
    kind = "zhipuai"
    style_mode = "system"
    default_base_url = DEFAULT_BASE_URL
    sdk_errors = (zhipuai.ZhipuAIError, httpx.TransportError)   # key required: the SDK won't start without

    def make_client(self) -> zhipuai.ZhipuAI:
        timeout = self.config.timeout if self.config.timeout is not None else NOT_GIVEN
        # The SDK sends the "id.secret" key as a bearer token (its JWT signing is off by default).
        return zhipuai.ZhipuAI(api_key=self.api_key(), base_url=self.base_url, timeout=timeout, max_retries=0)

    def open_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        return self.client().chat.completions.create(**self.request_body(messages, params), stream=True)

    def chunk_text(self, chunk: Any) -> str:
        return delta_text(chunk)

    def close_stream(self, response: Any) -> None:
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


def _backend_message(e: zhipuai.APIStatusError) -> str:
    """ZhipuAI's own error text ({"error": {"code", "message"}}), else the SDK's summary."""
    try:
        return str(e.response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return str(e)
