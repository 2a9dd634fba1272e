"""ZhipuAI GLM models: OpenAI's wire format at {base}/chat/completions, in the value ranges ZhipuAI takes."""

from __future__ import annotations

from typing import Any

from ..types import GenerationParams, Message
from . import KINDS
from .openai_compat import OpenAIProvider

# ZhipuAI takes temperature and top_p only inside (0, 1): greedy is do_sample=false instead of 0.
LOWEST, HIGHEST = 0.01, 0.99


class ZhipuAIProvider(OpenAIProvider):
    """The OpenAI-compatible kind with a required key (the "id.secret" key is sent as a bearer token, as
    ZhipuAI's own SDK does) and the request fields ZhipuAI knows, in the ranges it accepts."""

    kind = "zhipuai"
    default_base_url = "https://open.bigmodel.cn/api/paas/v4"
    key_required = True
    honours = KINDS["zhipuai"].honours

    def unsupported(self, params: GenerationParams) -> str | None:
        extra = params.extra or {}
        if extra.get("tools") and extra.get("tool_choice", "auto") != "auto":
            return "tool_choice"        # ZhipuAI only decides for itself ("auto")
        if extra.get("response_format", {}).get("type") == "json_schema":
            return "response_format"    # JSON mode yes, a schema no
        return super().unsupported(params)

    def request_body(self, messages: list[Message], params: GenerationParams) -> dict[str, Any]:
        """The chat.completions JSON; top_k and repetition_penalty have no ZhipuAI equivalent (penalties
        neither: `unsupported` refuses them). ZhipuAI sends usage with its last chunk unasked."""
        extra = params.extra or {}
        return self._body(messages, temperature=LOWEST if params.greedy else _clamp(params.temperature),
                          do_sample=False if params.greedy else None, top_p=_clamp(params.top_p),
                          max_tokens=params.max_new_tokens, seed=params.seed,
                          stop=list(params.stop) if params.stop else None,
                          **{name: extra.get(name) for name in ("tools", "tool_choice", "response_format")})


def _clamp(value: float | None) -> float | None:
    return None if value is None else min(max(value, LOWEST), HIGHEST)
