"""One module per backend kind, and the table of kinds (`KINDS`). Kinds are imported lazily so a missing
SDK only affects its own kind."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import NotReadyError
from .base import Provider


@dataclass(frozen=True)
class Kind:
    """A backend kind: its Provider class, pip packages, and the OpenAI request fields beyond sampling
    (GenerationParams.asked) it can honour (None: all, passed on as sent), readable without importing it
    (local imports torch). Some values of an honoured field may still be refused (Provider.unsupported)."""

    module: str
    cls: str
    packages: str | None
    honours: frozenset[str] | None


# The one table of backend kinds: the config's `kind` values, in the order its errors list them.
KINDS: dict[str, Kind] = {
    "local": Kind("llm.providers.local", "LocalProvider", "torch transformers", frozenset({"stop", "seed"})),
    "openai": Kind("llm.providers.openai_compat", "OpenAIProvider", "aiohttp", None),
    "gemini": Kind("llm.providers.gemini", "GeminiProvider", "google-genai",
                   frozenset({"stop", "seed", "frequency_penalty", "presence_penalty", "response_format",
                              "tools", "tool_choice"})),
    "zhipuai": Kind("llm.providers.zhipuai", "ZhipuAIProvider", "aiohttp",
                    frozenset({"stop", "seed", "tools", "tool_choice", "response_format"})),
    # Direct Reply: sampling cannot change a reply that is the typed text; stop strings, tools or JSON would.
    "echo": Kind("llm.providers.echo", "EchoProvider", None,
                 frozenset({"seed", "frequency_penalty", "presence_penalty"})),
    # GGUF files on the CPU through llama.cpp; its sampler has the OpenAI penalties and a logit bias.
    "gguf": Kind("llm.providers.gguf", "GGUFProvider", "llama-cpp-python",
                 frozenset({"stop", "seed", "frequency_penalty", "presence_penalty", "logit_bias"})),
}


def kind_honours(kind: str, fields: list[str]) -> bool:
    """Whether providers of `kind` can honour these fields (by name: a hint for error messages)."""
    honoured = KINDS[kind].honours if kind in KINDS else frozenset()
    return honoured is None or all(f in honoured for f in fields)


def provider_class(kind: str) -> type[Provider]:
    """The Provider class for a kind; NotReadyError naming the pip command when its SDK is missing."""
    entry = KINDS[kind]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        raise NotReadyError(f"the {kind} backend needs a package that is not installed: {e}",
                            fix=f"pip install {entry.packages}") from e
    return getattr(module, entry.cls)


__all__ = ["KINDS", "Kind", "Provider", "kind_honours", "provider_class"]
