"""The provider contract (stream text for a message list, readiness, close), keys, upstream failures."""

from __future__ import annotations

import logging
import os
import re
from abc import ABC
from contextlib import aclosing
from typing import TYPE_CHECKING, AsyncIterator, ClassVar, Iterator, Mapping

from ..errors import (
    InvalidRequestError,
    LLMError,
    MissingKeyError,
    RateLimitError,
    UpstreamError,
    UpstreamRefusedError,
    UpstreamTimeoutError,
)
from ..threads import in_loop, in_worker
from ..types import CancelToken, GenerationParams, Message, ProviderStatus, StreamEvent
from .wire import readable, retry_after_seconds

if TYPE_CHECKING:
    from configs import ProviderConfig

log = logging.getLogger(__name__)
DEFAULT_CONTEXT_WINDOW = 8192
DEFAULT_TIMEOUT = 30.0      # seconds per connect/read when `timeout` is unset (the SDKs would wait 600)
_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")
# Request fields the router itself sends, with the fix when a backend refuses one.
ROUTER_FIELDS = {"model": "check model in configs.yaml", "stream": "use a server that streams (SSE)",
                 "stream_options": "set stream_usage: false for this provider in configs.yaml"}


class Provider(ABC):
    """A backend: a kind implements `astream` (an async client) or `stream` (a blocking library: local
    models); the base adapts each to the other. A stream the caller closes early (budget, cancel, client
    gone) must stop the upstream work in its `finally`; providers also check `cancel` between deltas."""

    kind: ClassVar[str]
    style_mode: ClassVar[str] = "system"        # how the speech style is given: system | prefix
    default_concurrency: ClassVar[int | None] = None   # None: no limit
    styled: ClassVar[bool] = True               # False: the speech style never applies
    verbatim: ClassVar[bool] = False            # True: the text is passed on exactly as it came
    # Reliability defaults for this kind (seconds; None = no deadline); a config value overrides them.
    default_retries: ClassVar[int] = 0
    default_first_token_timeout: ClassVar[float | None] = None
    default_stall_timeout: ClassVar[float | None] = None
    # The OpenAI request fields beyond sampling (GenerationParams.asked) this kind can honour (None: all).
    honours: ClassVar[frozenset[str] | None] = frozenset()
    default_base_url: ClassVar[str] = ""
    key_required: ClassVar[bool] = False    # True: a key is needed even with a custom base_url

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None = None):
        if type(self).stream is Provider.stream and type(self).astream is Provider.astream:
            raise TypeError(f"{type(self).__name__} must implement astream or stream")
        self.config = config
        self.name = config.name
        self.env = os.environ if env is None else env

    async def astream(self, messages: list[Message], params: GenerationParams,
                      cancel: CancelToken) -> AsyncIterator[str | StreamEvent]:
        """The reply as text deltas ("" too: a sign of life, e.g. a reasoning chunk) and StreamEvents
        (tool-call deltas, finish reason, usage). A kind that implements `stream` runs in a worker thread."""
        own = CancelToken()     # closing this must not cancel the caller's token: a retry may follow
        cancel.on_cancel(own.cancel)
        async with aclosing(in_worker(lambda: self.stream(messages, params, own), own,
                                      name=f"llm-{self.name}")) as stream:
            async for item in stream:
                yield item

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str | StreamEvent]:
        """`astream` for a blocking caller, on an event loop of this call's own (`in_loop`)."""
        return in_loop(lambda: self.astream(messages, params, cancel), cancel, self.aclose_loop)

    def unsupported(self, params: GenerationParams) -> str | None:
        """The first field the call asks for that this provider cannot honour; None when it can honour all.
        Never dropped silently: the router refuses the request naming it."""
        if self.honours is None:
            return None
        return next((name for name in params.asked() if name not in self.honours), None)

    def status(self) -> ProviderStatus:
        """Ready, or not ready with the reason and the fix. Must be cheap and never load a model."""
        try:
            self.api_key(required=self.key_required or not self.config.base_url)
        except MissingKeyError as e:
            return ProviderStatus(False, e.message, e.fix)
        return ProviderStatus(True)

    def api_key(self, required: bool = True) -> str | None:
        """The key from the first set env var of `api_key_env`; MissingKeyError naming them otherwise."""
        names = self.config.api_key_env
        value = next((v for v in (self.env.get(var, "").strip() for var in names) if v), None)
        if value or not required or not names:
            return value
        raise MissingKeyError(f"{' or '.join(names)} is not set",
                              fix=f"export {names[0]}=... or set api_key_env in configs.yaml")

    @property
    def base_url(self) -> str:
        # Explicit, so an SDK never picks up a *_BASE_URL env var behind the config's back.
        return self.config.base_url or self.default_base_url

    # The shared vocabulary of upstream failures, onto which each backend maps its SDK's or wire's errors:
    def timeout_error(self) -> LLMError:
        return UpstreamTimeoutError(f"{self.name}: no answer from {self.base_url} in time",
                                    fix="raise timeout in configs.yaml or retry later")

    def unreachable_error(self, lost: bool = False, text_seen: bool = False) -> LLMError:
        if lost:
            when = "mid-reply" if text_seen else "before any text"
            return UpstreamError(f"{self.name}: the connection to {self.base_url} was lost {when}",
                                 transient=True, fix="retry; check the server's logs if it keeps happening")
        return UpstreamError(f"{self.name}: cannot reach {self.base_url}", transient=True,
                             fix="check base_url, the network and that the server is running")

    def status_error(self, status: int, detail: str, key_rejected: bool = False,
                     headers: Mapping[str, str] | None = None, field: str | None = None) -> LLMError:
        """The typed error for an HTTP error status, keeping it (and Retry-After); `field`: the request field
        the backend blamed. The client sees the backend's words without traceback or paths; the log whole."""
        raw = self.scrub(detail)        # masked before `readable` can cut a key in half
        detail = readable(raw)
        if raw != detail:
            log.warning("%s: the server answered %d: %s", self.name, status, raw)
        retry_after = retry_after_seconds(headers or {})
        if status in (401, 403) or key_rejected:
            if not self.config.api_key_env:     # e.g. a vLLM server started with --api-key
                return UpstreamError(f"{self.name}: {self.base_url} wants an API key ({status})",
                                     upstream_status=status, fix="name the key's env var in api_key_env")
            env = self.config.api_key_env[0]
            return UpstreamError(f"{self.name}: the API key was rejected ({status}); check {env}",
                                 upstream_status=status, fix=f"export {env}=<a valid key>")
        if status == 429:
            return RateLimitError(f"{self.name}: rate limited: {detail}", upstream_status=429,
                                  retry_after=retry_after, fix="wait and retry, or raise the account's quota")
        if status == 404:
            return UpstreamError(f"{self.name}: model {self.config.model!r} not found at {self.base_url}",
                                 upstream_status=404, fix="check model in configs.yaml")
        if field in ROUTER_FIELDS:      # what the router adds to every request: the operator's to fix
            return UpstreamRefusedError(f"{self.name}: the server refused {field!r}: {detail}",
                                        upstream_status=status, fix=ROUTER_FIELDS[field])
        if field:   # the backend refused what the client sent: the client's to fix, not a sign of ill health
            return InvalidRequestError(f"{self.name} refused {field!r}: {detail}", param=field,
                                       fix=f"change or remove {field!r}, or use a provider that accepts it")
        return UpstreamError(f"{self.name}: the server answered {status}: {detail}", upstream_status=status,
                             retry_after=retry_after)

    def scrub(self, text: str) -> str:
        """`text` with this provider's API key masked: keys never reach logs or callers."""
        key = self.api_key(required=False)
        return text.replace(key, "***") if key else text

    @property
    def style(self) -> str:
        return self.config.style_mode or self.style_mode

    @property
    def context_window(self) -> int:
        return self.config.context_window or DEFAULT_CONTEXT_WINDOW

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of a message list: each message's text plus ~4 for its role and framing."""
        return sum(4 + self.text_tokens(m.content) for m in messages)

    def text_tokens(self, text: str) -> int:
        """An estimate for backends without a local tokenizer: a CJK char ~ 1 token, else 4 chars ~ 1."""
        cjk = len(_CJK.findall(text))
        return cjk + (len(text) - cjk + 3) // 4

    def fit(self, messages: list[Message], reserve: int) -> list[Message]:
        """Drop the oldest non-system turns until the messages plus `reserve` new tokens fit
        (at most half the window is reserved for the reply, so history is not starved)."""
        budget = self.context_window - min(reserve, self.context_window // 2)
        system = [m for m in messages if m.role == "system"]
        rest = [m for m in messages if m.role != "system"]
        while len(rest) > 1 and self.count_tokens(system + rest) > budget:
            whole_turn = len(rest) > 2 and rest[0].role == "user" and rest[1].role == "assistant"
            rest = rest[2:] if whole_turn else rest[1:]
        return system + rest

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients or weights."""

    async def aclose_loop(self) -> None:  # noqa: B027 - optional hook
        """Release what belongs to the running event loop (its async clients), before the loop ends."""
