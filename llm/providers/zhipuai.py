"""ZhipuAI GLM models: OpenAI's wire format at {base}/chat/completions, in the value ranges ZhipuAI takes."""

from __future__ import annotations

from typing import Any

from ..types import GenerationParams, Message
from . import KINDS
from .openai_compat import OpenAIProvider

DEFAULT_BASE_URL = "https://open.bigmodel.cn/api/paas/v4"
# ZhipuAI takes temperature and top_p only inside (0, 1): greedy is do_sample=false instead of 0.
LOWEST, HIGHEST = 0.01, 0.99


class ZhipuAIProvider(OpenAIProvider):
    """The OpenAI-compatible kind with a required key (the "id.secret" key is sent as a bearer token, as
    ZhipuAI's own SDK does) and the request fields ZhipuAI knows, in the ranges it accepts."""

    kind = "zhipuai"
    default_base_url = DEFAULT_BASE_URL
    key_required = True
    honours = KINDS["zhipuai"].honours

    def unsupported(self, params: GenerationParams) -> str | None:
        extra = params.extra or {}
        if extra.get("tools") and extra.get("tool_choice", "auto") != "auto":
            return "tool_choice"        # ZhipuAI only decides for itself ("auto")
        if extra.get("response_format", {}).get("type") == "json_schema":
            return "response_format"    # JSON mode yes, a schema no
        return next((name for name in params.asked() if name not in self.honours), None)

    def _request(self, messages: list[Message], params: GenerationParams) -> tuple[str, dict, dict]:
        return (f"{self.base_url.rstrip('/')}/chat/completions", self.request_body(messages, params),
                {"Authorization": f"Bearer {self.api_key()}"})

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions JSON; top_k and repetition_penalty have no ZhipuAI equivalent (penalties
        neither: `unsupported` refuses them). ZhipuAI sends usage with its last chunk unasked."""
        body: dict[str, Any] = {"model": self.config.model, "messages": [m.as_dict() for m in messages],
                                "stream": True}
        if params.greedy:
            body.update(temperature=LOWEST, do_sample=False)
        elif params.temperature is not None:
            body["temperature"] = min(max(params.temperature, LOWEST), HIGHEST)
        if params.top_p is not None:
            body["top_p"] = min(max(params.top_p, LOWEST), HIGHEST)
        for name, value in (("max_tokens", params.max_new_tokens), ("seed", params.seed),
                            ("stop", list(params.stop) if params.stop else None)):
            if value is not None:
                body[name] = value
        extra = params.extra or {}
        return body | {name: extra[name] for name in ("tools", "tool_choice", "response_format")
                       if extra.get(name) is not None}
