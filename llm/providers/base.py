"""The provider contract: stream text for a message list; report readiness; close."""

from __future__ import annotations

import os
import re
import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Iterator, Mapping

from ..errors import (
    CancelledError,
    LLMError,
    MissingKeyError,
    RateLimitError,
    UpstreamError,
    UpstreamTimeoutError,
)
from ..types import CancelToken, GenerationParams, Message, ProviderStatus

if TYPE_CHECKING:
    from configs import ProviderConfig

DEFAULT_CONTEXT_WINDOW = 8192
_CJK = re.compile(r"[\u3000-\u9fff\uac00-\ud7af\uff00-\uffef]")


class Provider(ABC):
    """A backend. Subclasses implement `stream`; everything else has a sensible default.

    `stream` is a generator of text deltas. When the caller closes it early (budget reached,
    cancel, client gone) the generator's `finally` must stop the upstream work: stop generating
    tokens or close the HTTP stream. Providers also check `cancel` between deltas.
    """

    kind: ClassVar[str]
    style_mode: ClassVar[str] = "system"        # how the speech style is given: system | prefix
    default_concurrency: ClassVar[int | None] = None   # None: no limit
    styled: ClassVar[bool] = True               # False: the speech style never applies

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None = None):
        self.config = config
        self.name = config.name
        self.env = os.environ if env is None else env

    @abstractmethod
    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str]:
        """Yield the reply as text deltas."""

    def status(self) -> ProviderStatus:
        """Ready, or not ready with the reason and the fix. Must be cheap and never load a model."""
        if self.config.api_key_env and not self.config.base_url:
            try:
                self.api_key()
            except MissingKeyError as e:
                return ProviderStatus(False, e.message, e.fix)
        return ProviderStatus(True)

    def api_key(self, required: bool = True) -> str | None:
        """The key from the first set env var of `api_key_env`; MissingKeyError naming them otherwise."""
        for var in self.config.api_key_env:
            value = self.env.get(var, "").strip()
            if value:
                return value
        if not required or not self.config.api_key_env:
            return None
        names = " or ".join(self.config.api_key_env)
        raise MissingKeyError(f"{names} is not set",
                              fix=f"export {self.config.api_key_env[0]}=... "
                                  "or set api_key_env in configs.yaml")

    # ---- the shared vocabulary of upstream failures; each backend maps its SDK onto these ----

    @property
    def base_url(self) -> str:
        return self.config.base_url or ""

    def timeout_error(self) -> LLMError:
        return UpstreamTimeoutError(f"{self.name}: no answer from {self.base_url} in time",
                                    fix="raise timeout in configs.yaml or retry later")

    def unreachable_error(self) -> LLMError:
        return UpstreamError(f"{self.name}: cannot reach {self.base_url}",
                             fix="check base_url, the network and that the server is running")

    def status_error(self, status: int, detail: str, key_rejected: bool = False) -> LLMError:
        """The typed error for an HTTP error status from the backend, keeping that status."""
        detail = self.scrub(detail)
        if status in (401, 403) or key_rejected:
            if not self.config.api_key_env:     # e.g. a vLLM server started with --api-key
                return UpstreamError(f"{self.name}: {self.base_url} wants an API key ({status})",
                                     upstream_status=status, fix="name the key's env var in api_key_env")
            env = self.config.api_key_env[0]
            return UpstreamError(f"{self.name}: the API key was rejected ({status}); check {env}",
                                 upstream_status=status, fix=f"export {env}=<a valid key>")
        if status == 429:
            return RateLimitError(f"{self.name}: rate limited: {detail}", upstream_status=429,
                                  fix="wait and retry, or raise the account's quota")
        if status == 404:
            return UpstreamError(f"{self.name}: model {self.config.model!r} not found at {self.base_url}",
                                 upstream_status=404, fix="check model in configs.yaml")
        return UpstreamError(f"{self.name}: the server answered {status}: {detail}", upstream_status=status)

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
        """An estimate for backends without a local tokenizer: a CJK char ~ 1 token, else 4 chars ~ 1."""
        total = 0
        for m in messages:
            cjk = len(_CJK.findall(m.content))
            total += 4 + cjk + (len(m.content) - cjk + 3) // 4
        return total

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


class CloudProvider(Provider):
    """A backend reached through an SDK client: one shared client, one stream loop, one error path.

    Subclasses supply the connection (`make_client`) and the wire format (`open_stream`,
    `chunk_text`) and map their SDK's exceptions in `translate`.
    """

    default_base_url: ClassVar[str] = ""
    key_required: ClassVar[bool] = True     # False: a custom base_url may need no key
    sdk_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None = None):
        super().__init__(config, env)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        # Explicit, so an SDK never picks up a *_BASE_URL env var behind the config's back.
        return self.config.base_url or self.default_base_url

    def status(self) -> ProviderStatus:
        if self.key_required:
            try:
                self.api_key()
            except MissingKeyError as e:
                return ProviderStatus(False, e.message, e.fix)
        return super().status()

    def client(self) -> Any:
        """The SDK client, created on first use and shared (the SDK clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                self._client = self.make_client()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @abstractmethod
    def make_client(self) -> Any:
        """A new SDK client for this config (no SDK retries: the router owns fallback)."""

    @abstractmethod
    def open_stream(self, messages: list[Message], params: GenerationParams) -> Iterable[Any]:
        """Start the SDK's streaming call."""

    @abstractmethod
    def chunk_text(self, chunk: Any) -> str:
        """The text of one stream chunk ("" for role-only or metadata chunks)."""

    @abstractmethod
    def translate(self, e: BaseException) -> LLMError:
        """The typed error for an SDK exception, without the API key in its text."""

    def close_stream(self, response: Any) -> None:
        response.close()    # closes the HTTP stream, so the server stops generating

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str]:
        if cancel.cancelled:
            raise CancelledError("generation cancelled")
        response = None
        try:
            response = self.open_stream(messages, params)
            for chunk in response:
                if cancel.cancelled:
                    raise CancelledError("generation cancelled")
                text = self.chunk_text(chunk)
                if text:
                    yield text
        except self.sdk_errors as e:
            raise self.translate(e) from e
        finally:
            if response is not None:
                self.close_stream(response)


def delta_text(chunk: Any) -> str:
    """The text of an OpenAI-shaped stream chunk; "" for role-only, usage-only or filter-result chunks."""
    if not chunk.choices or chunk.choices[0].delta is None:
        return ""
    return chunk.choices[0].delta.content or ""
