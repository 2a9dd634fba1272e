"""Name -> provider, speech style, history fitting, fallback; sync and async entry points.

Every call carries its own history and cancel token: the router keeps no per-caller state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from contextlib import aclosing
from dataclasses import replace
from typing import AsyncIterator, Iterator, Mapping

from configs import Settings, load_settings

from . import speech
from .errors import NotReadyError, UnknownProviderError
from .knowledge import Knowledge
from .policy import Breaker, FallbackChain, Policy, cooling_fix
from .providers import Provider, provider_class
from .replicas import Replicas, replica_key
from .reply import Reply
from .request import Request, can_serve, who
from .request import build as build_request
from .sessions import Sessions
from .threads import in_loop
from .tries import Slots, Try
from .types import (
    DEFAULT_MAX_NEW_TOKENS,
    CancelToken,
    Chunk,
    Message,
    ProviderStatus,
)

log = logging.getLogger(__name__)


class Router:
    def __init__(self, settings: Settings | None = None, env: Mapping[str, str] | None = None,
                 providers: Mapping[str, Provider] | None = None):
        """`providers` injects ready-made instances (embedding, tests); the rest are built lazily."""
        self.settings = settings or load_settings()
        self.env = env
        self._providers: dict[str, Provider] = {}
        self._replicas: dict[str, Replicas] = {}     # name -> the servers of a provider with base_urls
        self._member_of: dict[str, str] = {}         # a replica's key -> its provider's name
        self._slots: dict[str, Slots] = {}
        self._breakers: dict[str, Breaker] = {}
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._knowledge: Knowledge | None = None
        self._sessions: Sessions | None = None
        self._knowledge_lock = threading.Lock()     # opening it may load a model: not under _lock
        for name, p in (providers or {}).items():
            self._add(name, p)

    def names(self) -> list[str]:
        return list(self.settings.providers)

    def resolve(self, name: str | None) -> str:
        """The provider name for a name or one of a provider's `aliases`; the default for None."""
        name = name or self.settings.default
        if name not in self.settings.providers:
            for cfg in self.settings.providers.values():
                if name in cfg.aliases:
                    return cfg.name
        return name

    def provider(self, name: str | None = None) -> Provider:
        """The (lazily created, then shared) provider for a name or alias; the config default when None."""
        name = self.resolve(name)
        if name not in self.settings.providers:
            raise UnknownProviderError(f"unknown provider {name!r}",
                                       fix=f"use one of: {', '.join(self.settings.providers)}")
        with self._lock:
            if name not in self._providers:
                self._build(name, self.settings.providers[name])
            return self._providers[name]

    def _build(self, name: str, cfg) -> None:
        """The provider; with several `base_urls`, one instance per server (a replica, with its own
        breaker and slots), the first standing for the provider wherever one instance is asked for."""
        cls = provider_class(cfg.kind)
        if len(cfg.base_urls) < 2:
            self._add(name, cls(cfg, self.env))
            return
        keys = [replica_key(name, url) for url in cfg.base_urls]
        for key, url in zip(keys, cfg.base_urls, strict=True):
            self._add(key, cls(replace(cfg, base_url=url), self.env))
            self._member_of[key] = name
        self._providers[name] = self._providers[keys[0]]
        self._replicas[name] = Replicas(keys)

    def replicas(self, name: str) -> Replicas | None:
        """The servers of a provider with several `base_urls` (None for any other)."""
        self.provider(name)
        return self._replicas.get(self.resolve(name))

    def _member(self, key: str) -> Provider:
        """The provider for a chain entry: a provider's name, or one of its replicas' keys."""
        return self._providers[key] if key in self._member_of else self.provider(key)

    def built(self, name: str | None) -> bool:
        """Whether the provider for `name` (and its fallbacks) exist already, so using them costs nothing."""
        name = self.resolve(name)
        cfg = self.settings.providers.get(name)
        return cfg is not None and all(n in self._providers for n in (name, *cfg.fallback))

    def _add(self, name: str, p: Provider) -> None:
        limit = p.config.max_concurrency or p.default_concurrency
        self._slots[name] = Slots(limit or None)
        self._providers[name] = p

    def add_providers(self, providers: Mapping[str, Provider]) -> list[str]:
        """Providers found at run time (llm/ollama.py), listed after the others; a name already taken (by a
        provider or an alias) keeps its own. The settings are replaced whole, never changed in place."""
        with self._lock:
            known = self.settings.providers
            taken = set(known) | {alias for cfg in known.values() for alias in cfg.aliases}
            new = {name: p for name, p in providers.items() if name not in taken}
            for name, p in new.items():
                self._add(name, p)
            if new:
                self.settings = replace(self.settings,
                                        providers={**known, **{name: p.config for name, p in new.items()}})
        return list(new)

    def status(self, name: str) -> ProviderStatus:
        """Whether `name` could answer now: its own readiness, then whether it is cooling down."""
        try:
            status = self.provider(name).status()
        except NotReadyError as e:
            return ProviderStatus(False, e.message, e.fix)
        replicas = self._replicas.get(self.resolve(name))
        # a provider with replicas cools down when every one of them does
        breaker = min((self.breaker(k) for k in (replicas.keys if replicas else [name])),
                      key=Breaker.seconds_left)
        left = breaker.seconds_left()
        if status.ready and left > 0:
            last = self.redact(breaker.last_error)
            fallback = bool(self.settings.providers[self.resolve(name)].fallback)
            status = ProviderStatus(False, f"cooling down, {left:.0f} s left (last error: {last})",
                                    f"{cooling_fix(fallback)}; then one request tries it again",
                                    cooldown_s=round(left, 1), last_error=last)
        return replace(status, replicas=self._replica_states(replicas)) if replicas else status

    def _replica_states(self, replicas: Replicas) -> tuple[dict, ...]:
        held = replicas.conversations()
        return tuple({"url": self._providers[key].base_url, "cooldown_s": round(breaker.seconds_left(), 1),
                      "last_error": self.redact(breaker.last_error), "busy": self._slots[key].busy,
                      "conversations": held[key]}
                     for key, breaker in ((k, self.breaker(k)) for k in replicas.keys))

    def add_secret(self, secret: str | None) -> None:
        """Mask `secret` too wherever `redact` is used (the API adds its own key)."""
        if secret:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        """`text` with every provider's API key (from the env vars the config names) and every added
        secret replaced by ***: upstream error messages may quote anything back."""
        env = os.environ if self.env is None else self.env
        secrets = self._secrets | {env.get(var, "") for cfg in self.settings.providers.values()
                                   for var in cfg.api_key_env}
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    @property
    def knowledge(self) -> Knowledge | None:
        """The deployment's knowledge (`knowledge:` in the config), opened on first use; None when off."""
        if self._knowledge is None and self.settings.knowledge.enabled:
            with self._knowledge_lock:
                if self._knowledge is None:
                    writer = self.settings.knowledge.questions
                    self._knowledge = Knowledge(self.settings.knowledge, self.settings.store,
                                                self._writer(writer) if writer else None)
        return self._knowledge

    @property
    def sessions(self) -> Sessions:
        """The conversations the server keeps (`sessions:`, `store:`), opened on first use."""
        if self._sessions is None:
            with self._knowledge_lock:
                if self._sessions is None:
                    self._sessions = Sessions(self.settings.sessions, self.settings.store)
        return self._sessions

    def _writer(self, name: str):
        """A model's plain answer to a prompt (no speech style, no knowledge): it writes the questions
        each passage answers, at index time."""
        def write(prompt: str) -> str:
            return self.chat(prompt, provider=name, style=False, knowledge=False,
                             params={"temperature": 0.3, "max_new_tokens": 300}).text
        return write

    def policy(self, key: str) -> Policy:
        """A provider's reliability settings; a replica does not retry itself: its siblings follow it."""
        policy = Policy.of(self._member(key))
        return replace(policy, retries=0) if key in self._member_of else policy

    def breaker(self, name: str) -> Breaker:
        with self._lock:
            return self._breakers.setdefault(name, Breaker())

    def statuses(self) -> dict[str, ProviderStatus]:
        return {name: self.status(name) for name in self.names()}

    def close(self) -> None:
        with self._lock:
            for p in self._distinct():
                p.close()
            self._providers.clear()
            if self._knowledge is not None:
                self._knowledge.close()
            if self._sessions is not None:
                self._sessions.close()

    async def aclose_loop(self) -> None:
        """Close the providers' async clients that belong to the running loop (a server shutting down)."""
        with self._lock:
            providers = self._distinct()
        for p in providers:
            await p.aclose_loop()

    def _distinct(self) -> list[Provider]:
        return list({id(p): p for p in self._providers.values()}.values())

    def request(self, prompt: str, **kw) -> Request:
        """Validate loose arguments into a Request, with what the knowledge found for the prompt
        (`llm.request.build`: the arguments, the answer budget; blocking: see `arequest`)."""
        return build_request(self, prompt, **kw)

    async def arequest(self, prompt: str | None, **kw) -> Request:
        """`request` without blocking the loop: in a worker thread when it must build a provider (an SDK
        import, a model's files) or look up the knowledge (the index on disk); at once otherwise."""
        if self.built(kw.get("provider")) and not (self.settings.knowledge.enabled
                                                   and kw.get("knowledge") is not False):
            return self.request(prompt, **kw)
        return await asyncio.to_thread(self.request, prompt, **kw)

    def stream(self, prompt: str | Request, *, cancel: CancelToken | None = None, hold: str = "none",
               **kw) -> Iterator[Chunk]:
        """`astream` for synchronous callers (the CLI, the scoreboard, scripts), on an event loop of this
        call's own; a cancel from another thread still ends it at once. Not for use on a running loop."""
        cancel = cancel or CancelToken()
        return in_loop(lambda: self.astream(prompt, cancel=cancel, hold=hold, **kw), cancel, self.aclose_loop)

    def _chain(self, req: Request) -> list[str]:
        """The provider, then its fallbacks that can honour the request; a provider with replicas as its
        servers in the order to ask them."""
        names = [req.provider] + [n for n in self.settings.providers[req.provider].fallback
                                  if n != req.provider and can_serve(self, n, req.params, req.history)]
        return [key for name in names for key in self._servers(name, req.affinity)]

    def _servers(self, name: str, affinity: str | None) -> list[str]:
        replicas = self._replicas.get(name)
        if replicas is None:
            return [name]
        return replicas.order(affinity, busy=lambda key: self._slots[key].busy,
                              cooling=lambda key: self.breaker(key).seconds_left() > 0)

    def chat(self, prompt: str | Request, *, cancel: CancelToken | None = None, **kw) -> Reply:
        """`achat` for synchronous callers (see `stream`)."""
        cancel = cancel or CancelToken()

        async def whole() -> AsyncIterator[Reply]:
            yield await self.achat(prompt, cancel=cancel, **kw)
        [reply] = in_loop(whole, cancel, self.aclose_loop)
        return reply

    async def astream(self, prompt: str | Request, *, cancel: CancelToken | None = None,
                      hold: str = "none", **kw) -> AsyncIterator[Chunk]:
        """Stream the reply as Chunks under the reliability policy (`llm.policy`), falling back along the
        provider's `fallback` list while no text has been yielded. `hold` is how much the caller holds back
        before anyone sees it ("none", "sentence" or "all"), so a provider that fails within it can still
        be replaced. Never blocks the running loop; leaving early, or the task being cancelled, cancels."""
        req = prompt if isinstance(prompt, Request) else await self.arequest(prompt, **kw)
        cancel = cancel or CancelToken()
        if hold not in HOLDS:
            raise ValueError(f"hold must be one of {', '.join(HOLDS)}")
        if req.grounding is not None and req.grounding.answer is not None:
            yield Chunk(speech.clean_for_speech(req.grounding.answer), KNOWLEDGE)   # said as written, uncut
            yield Chunk("", KNOWLEDGE, finish_reason="stop", usage=_NO_TOKENS)
            return
        # the chain builds its fallbacks on first use (an SDK import): not on the loop
        chain = self._chain(req) if self.built(req.provider) else await asyncio.to_thread(self._chain, req)
        fallbacks = FallbackChain(chain, lambda name, *run: self._prepare(name, req).arun(*run), self.policy,
                                  self.breaker, cancel, show=HOLDS[hold], redact=self.redact)
        try:
            async with aclosing(fallbacks.run()) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            cancel.cancel()
            if fallbacks.winner is not None and req.provider in self._replicas:
                self._replicas[req.provider].answered(req.affinity, fallbacks.winner.name)

    async def achat(self, prompt: str | Request, *, cancel: CancelToken | None = None, **kw) -> Reply:
        """The whole reply: its text, the provider that answered, timings in ms, tool calls and usage."""
        req = prompt if isinstance(prompt, Request) else await self.arequest(prompt, **kw)
        reply = Reply(req, cancel)
        async with aclosing(reply.chunks(self.astream(req, cancel=reply.cancel, hold="all"))) as chunks:
            async for _ in chunks:
                pass
        return reply

    def _prepare(self, key: str, req: Request) -> Try:
        """One try at one provider (or replica), made ready: readiness, the speech style, params, history
        fitting."""
        provider, name = self._member(key), self._member_of.get(key, key)
        status = provider.status()
        if not status.ready:
            raise NotReadyError(f"{who(name, provider)} is not ready: {status.reason}", fix=status.fix)
        styled = req.style and provider.styled
        # No max_tokens is sent that the client (or the config) did not ask for: a cloud or vLLM server
        # has its own limit, and the speech budget closes a styled stream; a local model bounds itself.
        params = req.params.merged_over(provider.config.generation)
        reserve = params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        messages = provider.fit(self._messages(provider, req, styled), reserve=reserve)
        return Try(name, provider, params, messages, req.budget if styled else None,
                    {"emotions": req.emotions if styled else (), "verbatim": provider.verbatim,
                     "lang": "zh" if speech.is_chinese(req.prompt or "") else "en"}, self._slots[key])

    def _messages(self, provider: Provider, req: Request, styled: bool) -> list[Message]:
        """The system text (the caller's, then the knowledge's passages, then the speech rule), the history
        and the prompt; a "prefix"-style provider (a base model) has the rule before the prompt instead."""
        prompt, system = req.prompt, [req.system] if req.system else []
        if req.grounding is not None and req.grounding.passages:
            system.append(req.grounding.instruction(speech.is_chinese(prompt or "")))
        if styled and prompt is not None:
            rule = req.budget.instruction(prompt, req.emotions)
            if provider.style == "prefix":
                prompt = f"{rule} {prompt}" if speech.is_chinese(prompt) else f"{rule}\n{prompt}"
            else:
                system.append(rule)
        messages = [Message("system", "\n".join(system))] if system else []
        messages += [m for m in req.history if m.role != "system"]
        if prompt is not None:
            messages.append(Message("user", prompt))
        return messages


KNOWLEDGE = "knowledge"     # the provider named by a reply the knowledge gave word for word
_NO_TOKENS = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _after_first_sentence():
    splitter = speech.SentenceSplitter()
    return lambda text: bool(splitter.feed(text))


# What a caller holds back before anyone sees the text (`Router.astream`'s `hold`): "sentence" for a sentence
# stream (it shows whole sentences), "all" for a non-streaming reply (it comes at once when complete).
HOLDS = {"none": None, "sentence": _after_first_sentence, "all": lambda: (lambda _text: False)}
