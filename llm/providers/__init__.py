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


def provider_class(kind: str) -> type[Provider]:
    """The Provider class for a kind; NotReadyError naming the pip command when its SDK is missing."""
    module_name, class_name, packages = _KINDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise NotReadyError(f"the {kind} backend needs a package that is not installed: {e}",
                            fix=f"pip install {packages}") from e
    return getattr(module, class_name)


__all__ = ["Provider", "provider_class"]
