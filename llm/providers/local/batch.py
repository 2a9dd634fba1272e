"""Many streams on one local model at once, each with its own sampling params: continuous batching."""

from __future__ import annotations

import logging
import math
import queue
import threading
import uuid
from types import SimpleNamespace
from typing import Any, Iterator

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig

from ...errors import UpstreamError
from ...types import CancelToken
from .engine import generation_error

log = logging.getLogger(__name__)
POLL_S = 0.1            # how often a waiting request looks at its cancel token and the engine's health
CPU_CACHE_TOKENS = 512  # per stream on a CPU (tests): the cache is sized, not taken from free RAM
GPU_CACHE_SHARE = 0.5   # of the memory free after loading: the rest stays for other models (the pool)
# The manager hands each result to a (handler, loop) pair by loop.call_soon_threadsafe; this "loop" runs the
# handler (a queue's put) at once in the engine's thread, so no event loop thread is needed in between.
AT_ONCE = SimpleNamespace(call_soon_threadsafe=lambda handler, *args: handler(*args))


class Batcher:
    """A continuous-batching engine for one model, started (and warmed up) at load time."""

    def __init__(self, model: Any, special: dict[str, Any], streams: int, name: str):
        self.model, self.name, self.streams = model, name, streams
        self.vocab = model.config.get_text_config().vocab_size
        self.eos, self.pad = special["eos_token_id"], special["pad_token_id"]
        self._lock, self._closed = threading.Lock(), False
        self._manager = self._start()

    def _start(self) -> Any:
        """A started manager whose cache and CUDA graphs exist (warm-up), so errors show at load."""
        # Sampling is on with non-neutral defaults so the per-request temperature/top-k/top-p processors
        # exist; each request then sets all three (greedy is top_k=1).
        config = GenerationConfig(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, eos_token_id=self.eos,
                                  pad_token_id=self.pad, max_new_tokens=256)
        cuda = self.model.device.type == "cuda"
        sizes: dict[str, Any] = {"max_memory_percent": GPU_CACHE_SHARE} if cuda else {
            "page_size": 16, "num_blocks": math.ceil(self.streams * CPU_CACHE_TOKENS / 16),
            "max_batch_tokens": 256, "use_cuda_graph": False}
        batching = ContinuousBatchingConfig(per_request_processors=True, max_requests_per_batch=self.streams,
                                            **sizes)
        manager = self.model.init_continuous_batching(generation_config=config,
                                                      continuous_batching_config=batching)
        with torch.no_grad():   # not inference_mode: its tensors would refuse the engine's in-place resets
            manager.warmup()
        manager.start()
        return manager

    def _running(self) -> Any:
        """A manager that takes requests: a new one if the last died or is dying (meanwhile callers wait)."""
        with self._lock:
            if self._closed:
                raise self._refused()
            manager, status = self._manager, self._manager.background_thread_status
            if not manager.is_running() or status.can_accept_new_requests() is not None:
                # Its thread fails its requests first and exits after: a request that came in between
                # (the reply that met the error, retried at once) would be refused by the dying engine.
                log.warning("%s: the batching engine had stopped (%s); starting it again", self.name,
                            status.fatal_error or "stopping")
                manager.stop(block=True, timeout=10)
                self._manager = self._start()
            return self._manager

    def sampling(self, greedy: bool, temperature: float | None, top_p: float | None,
                 top_k: int | None) -> dict[str, Any]:
        """One request's sampling params, all three set (an unset one takes the engine's default)."""
        if greedy:
            return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
        defaults = self.model.generation_config
        temperature = temperature if temperature is not None else defaults.temperature or 1.0
        top_p = top_p if top_p is not None else defaults.top_p or 1.0
        top_k = top_k if top_k is not None else defaults.top_k or 0
        return {"temperature": float(temperature), "top_p": float(top_p),
                "top_k": int(top_k) if 0 < top_k < self.vocab else self.vocab}

    def stream(self, ids: list[int], max_new_tokens: int, request: dict[str, Any],
               cancel: CancelToken) -> Iterator[list[int]]:
        """One request's new token ids as made; closing this (or cancelling) drops it at the next step."""
        rid = f"{self.name}-{uuid.uuid4().hex}"
        results: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(2):      # a manager dying meanwhile refuses it: then its successor takes it
            manager = self._running()
            handlers = manager.output_router.result_handlers
            handlers[rid] = (results.put, AT_ONCE)      # before add_request: no result is lost
            if manager.add_request(ids, request_id=rid, max_new_tokens=max_new_tokens, streaming=True,
                                   **{"eos_token_id": self.eos} | request) is not None:
                break
            handlers.pop(rid, None)
        else:
            raise self._refused()
        seen, finished = 0, False
        try:
            while not finished:
                try:
                    out = results.get(timeout=POLL_S)
                except queue.Empty:
                    if cancel.cancelled:
                        return
                    if not manager.is_running():
                        raise self._error(str(manager.background_thread_status.fatal_error)) from None
                    continue
                finished = out.is_finished()
                if out.error:
                    raise self._error(out.error)
                new, seen = out.generated_tokens[seen:], len(out.generated_tokens)
                if new:
                    yield new
        finally:
            if not finished:
                manager.cancel_request(rid)
            manager.output_router.result_handlers.pop(rid, None)

    def _refused(self) -> UpstreamError:
        return UpstreamError(f"{self.name}: the batching engine is not taking requests now", status=503,
                             fix="try again in a moment")

    def _error(self, text: str) -> UpstreamError:
        if "can be scheduled" in text:
            return UpstreamError(f"{self.name}: this reply does not fit the batching engine's KV cache "
                                 f"({text})", status=503,
                                 fix="lower max_new_tokens or shorten the history; or set a lower "
                                     f"max_concurrency or engine: generate for provider {self.name}")
        return generation_error(self.name, RuntimeError(text))

    def paused(self) -> Any:
        """Hold the engine between steps while a seeded generate needs the sampling RNG it shares."""
        return self._running().pause()

    def close(self) -> None:
        """Stop the engine (its requests end) and free its cache; for good: no request starts it again."""
        with self._lock:
            self._closed = True
            self._manager.stop(block=True, timeout=10)
