"""ZhipuAI GLM models through the zhipuai SDK (POST {base}/chat/completions, OpenAI-shaped SSE)."""

from __future__ import annotations

from typing import Any

import httpx
import zhipuai

from ..errors import (
    LLMError,
    UpstreamError,
)
from ..types import GenerationParams, Message
from . import KINDS
from .base import Provider
from .cloud import CloudProvider
from .wire import backend_message, delta_event, delta_finished, delta_text

DEFAULT_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
GREEDY_TEMPERATURE = 0.01   # ZhipuAI rejects temperature 0; greedy is do_sample=False instead


class ZhipuAIProvider(CloudProvider):
    kind = "zhipuai"
    style_mode = "system"
    default_base_url = DEFAULT_BASE_URL
    sdk_errors = (zhipuai.ZhipuAIError,)   # key required: the SDK won't start without
    honours = KINDS["zhipuai"].honours
    astream = Provider.astream      # its SDK blocks: the base's worker-thread adapter reads `stream`

    def unsupported(self, params: GenerationParams) -> str | None:
        extra = params.extra or {}
        if extra.get("tools") and extra.get("tool_choice", "auto") != "auto":
            return "tool_choice"        # ZhipuAI only decides for itself ("auto")
        if extra.get("response_format", {}).get("type") == "json_schema":
            return "response_format"    # JSON mode yes, a schema no
        return super().unsupported(params)

    def make_client(self, http: httpx.Client) -> zhipuai.ZhipuAI:
        # The SDK sends the "id.secret" key as a bearer token (its JWT signing is off by default).
        return zhipuai.ZhipuAI(api_key=self.api_key(), base_url=self.base_url, timeout=self.timeout,
                               max_retries=0, http_client=http)

    def http_module(self):
        return httpx     # zhipuai is built on httpx

    def open_stream(self, messages: list[Message], params: GenerationParams) -> Any:
        return self.client().chat.completions.create(**self.request_body(messages, params), stream=True)

    def chunk_text(self, chunk: Any) -> str:
        return delta_text(chunk)

    def chunk_finished(self, chunk: Any) -> bool:
        return delta_finished(chunk)

    def chunk_event(self, chunk: Any, state: dict) -> Any:
        return delta_event(chunk)

    def close_stream(self, response: Any) -> None:
        response.response.close()   # the SDK's stream has no close(); its HTTP response does

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions arguments; top_k and repetition_penalty have no ZhipuAI equivalent
        (penalties neither: `unsupported` refuses them)."""
        body: dict[str, Any] = {"model": self.config.model, "messages": [m.as_dict() for m in messages]}
        if params.greedy:
            body.update(temperature=GREEDY_TEMPERATURE, do_sample=False)
        elif params.temperature is not None:
            body["temperature"] = params.temperature   # the SDK clamps it into ZhipuAI's (0, 1)
        if params.top_p is not None:
            body["top_p"] = params.top_p               # the SDK turns 1.0, which ZhipuAI rejects, into 0.99
        if params.max_new_tokens is not None:
            body["max_tokens"] = params.max_new_tokens
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed
        extra = params.extra or {}
        for name in ("tools", "tool_choice", "response_format"):
            if extra.get(name) is not None:
                body[name] = extra[name]
        return body

    # ---- errors ----------------------------------------------------------------------------

    def translate(self, e: Exception) -> LLMError:
        """The typed error for an SDK exception, without the API key in its text."""
        if isinstance(e, zhipuai.APITimeoutError):
            return self.timeout_error()
        if isinstance(e, zhipuai.APIConnectionError):
            return self.unreachable_error()
        if isinstance(e, zhipuai.APIStatusError):
            return self.status_error(e.status_code, backend_message(_json(e.response), str(e)),
                                     headers=e.response.headers)
        return UpstreamError(f"{self.name}: {self.scrub(getattr(e, 'message', None) or str(e))}")


def _json(response: httpx.Response) -> Any:
    """ZhipuAI's error body ({"error": {"code", "message"}}), or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None
