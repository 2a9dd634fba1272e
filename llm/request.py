"""A call as the router runs it (`Request`), validated from loose arguments, and whether a provider can
honour all of it: a field it has no equivalent for is refused, never silently dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import speech
from .errors import InvalidRequestError, LLMError
from .knowledge import Grounding
from .providers import Provider, kind_honours
from .types import GenerationParams, Message, normalize_history

if TYPE_CHECKING:
    from .router import Router

_WITH_TOOLS = GenerationParams(extra={"tools": [{"type": "function"}]})


@dataclass(frozen=True)
class Request:
    """Everything one call needs; built by `Router.request` from loose arguments."""

    prompt: str | None      # None: the history ends with tool results the model answers
    provider: str
    history: tuple[Message, ...] = ()
    system: str | None = None
    params: GenerationParams = GenerationParams()
    style: bool = True
    budget: speech.Budget = speech.Budget()
    emotions: tuple[str, ...] = ()     # the tags the model is asked for; () = off
    grounding: Grounding | None = None  # what the knowledge found for the prompt; None = not used
    affinity: str | None = None         # the conversation (session) it belongs to: its replica answers


def build(router: Router, prompt: str, *, provider: str | None = None, history: Any = None,
          system: str | None = None, params: GenerationParams | dict | None = None,
          style: bool | None = None, max_chars: int | None = None, max_seconds: float | None = None,
          emotions: bool | None = None, knowledge: bool | None = None,
          affinity: str | None = None) -> Request:
    """Validate loose arguments into a Request (InvalidRequestError on bad input), with what the
    knowledge found for the prompt unless `knowledge` is False (blocking: see `Router.arequest`).

    The answer budget: `max_chars`, else `max_seconds`, else the config's `max_chars` (an explicit
    override), else its `max_seconds`. A request for a program (tools, a JSON reply) is not styled
    unless `style` says so. A field the provider cannot honour (`Provider.unsupported`) is refused.
    `affinity`: the conversation the call belongs to; a provider's replicas keep one per server."""
    messages = tuple(normalize_history(history))
    tool_turn = prompt is None and bool(messages) and messages[-1].role == "tool"
    if not tool_turn and (not isinstance(prompt, str) or not prompt.strip()):
        raise InvalidRequestError("prompt must be a non-empty string")
    if system is not None and not isinstance(system, str):
        raise InvalidRequestError("system must be a string")
    params = GenerationParams(**params) if isinstance(params, dict) else params or GenerationParams()
    cfg = router.settings.style
    if max_chars is not None:
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise InvalidRequestError("max_chars must be a positive integer")
        budget = speech.Budget(chars=max_chars)
    elif max_seconds is not None:
        if not speech.valid_seconds(max_seconds):
            raise InvalidRequestError(f"max_seconds {speech.SECONDS_RULE}")
        budget = speech.Budget(seconds=float(max_seconds))
    else:
        budget = speech.Budget(chars=cfg.max_chars) if cfg.max_chars else speech.Budget(cfg.max_seconds)
    if affinity is not None and not isinstance(affinity, str):
        raise InvalidRequestError("affinity must be a string")
    for flag, value in (("emotions", emotions), ("knowledge", knowledge)):
        if value is not None and not isinstance(value, bool):
            raise InvalidRequestError(f"{flag} must be true or false")
    name = router.resolve(provider)
    _refuse_unsupported(router, name, params, messages)    # unknown names fail here too, before any work
    styled = (cfg.short_answer and not params.for_program) if style is None else bool(style)
    grounding = None
    if _grounded(router, name, prompt, params, knowledge):
        grounding = router.knowledge.lookup(prompt)
    return Request(prompt=prompt, provider=name, history=messages, system=system or None, params=params,
                   style=styled, budget=budget, grounding=grounding, affinity=affinity or None,
                   emotions=cfg.emotion_set if (cfg.emotions if emotions is None else emotions) else ())


def _grounded(router: Router, name: str, prompt: str | None, params: GenerationParams,
              knowledge: bool | None) -> bool:
    """Whether the knowledge answers this call: it is on, not turned off for the call, there is a
    question, the answer is for speech (not tools or JSON), and the provider is not Direct Reply."""
    return (router.settings.knowledge.enabled and knowledge is not False and prompt is not None
            and not params.for_program and router.settings.providers[name].kind != "echo")


def _refuse_unsupported(router: Router, name: str, params: GenerationParams,
                        messages: tuple[Message, ...]) -> None:
    provider = router.provider(name)
    field = _unsupported(provider, params, messages)
    if field is not None:
        needs = params.asked() + (["tools"] if any(m.for_tools for m in messages) else [])
        able = [n for n, cfg in router.settings.providers.items()
                if n != name and kind_honours(cfg.kind, needs)]
        what = "the tool calls in messages" if field == "messages" else repr(field)
        raise InvalidRequestError(
            f"{who(name, provider)} cannot honour {what}: the {provider.kind} backend has no "
            "equivalent, and leaving it out would change the answer", param=field,
            fix=f"remove {field!r}, or use a provider that honours it"
                + (f": {', '.join(able)}" if able else ""))


def _unsupported(provider: Provider, params: GenerationParams, messages: tuple[Message, ...]) -> str | None:
    if any(m.for_tools for m in messages) and provider.unsupported(_WITH_TOOLS) is not None:
        return "messages"   # tool calls and tool results in the history
    return provider.unsupported(params)


def can_serve(router: Router, name: str, params: GenerationParams, messages: tuple[Message, ...]) -> bool:
    """Whether `name` honours every field of the call (a fallback that cannot is skipped)."""
    try:
        return _unsupported(router.provider(name), params, messages) is None
    except LLMError:    # its SDK is missing: it could not answer anyway
        return False


def who(name: str, provider: Provider) -> str:
    """A provider as errors name it: its label, and its name when that differs."""
    label = provider.config.display_name
    return name if label == name else f"{label} ({name})"
