"""One module per backend kind. Kinds are imported lazily so a missing SDK only affects its own kind."""

from __future__ import annotations

import importlib

from ..errors import NotReadyError
from .base import Provider

_KINDS = {
    "echo": ("llm.providers.echo", "EchoProvider", None),
    "local": ("llm.providers.local", "LocalProvider", "torch transformers"),
    "openai": ("llm.providers.openai_compat", "OpenAIProvider", "openai"),
    "gemini": ("llm.providers.gemini", "GeminiProvider", "google-genai"),
    "zhipuai": ("llm.providers.zhipuai", "ZhipuAIProvider", "zhipuai"),
}


# The OpenAI request fields beyond sampling (GenerationParams.asked) each kind can honour, readable
# without importing the kind (local imports torch); None: every field, passed on as sent. A kind may
# refuse some values of a field it honours (Provider.unsupported).
HONOURS: dict[str, frozenset[str] | None] = {
    "echo": frozenset({"seed", "frequency_penalty", "presence_penalty"}),   # no sampling to change
    "local": frozenset({"stop", "seed"}),
    "openai": None,
    "gemini": frozenset({"stop", "seed", "frequency_penalty", "presence_penalty", "response_format", "tools",
                         "tool_choice"}),
    "zhipuai": frozenset({"stop", "seed", "tools", "tool_choice", "response_format"}),
}


def kind_honours(kind: str, fields: list[str]) -> bool:
    """Whether providers of `kind` can honour these fields (by name: a hint for error messages)."""
    honoured = HONOURS.get(kind, frozenset())
    return honoured is None or all(f in honoured for f in fields)


def provider_class(kind: str) -> type[Provider]:
    """The Provider class for a kind; NotReadyError naming the pip command when its SDK is missing."""
    module_name, class_name, packages = _KINDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise NotReadyError(f"the {kind} backend needs a package that is not installed: {e}",
                            fix=f"pip install {packages}") from e
    return getattr(module, class_name)


__all__ = ["HONOURS", "Provider", "kind_honours", "provider_class"]
