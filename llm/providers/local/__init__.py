"""Local transformers models: loaded once on first use, shared, streamed token by token."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ...download import hub_location, model_is_path
from ...errors import CancelledError, ConfigError, InvalidRequestError, NotReadyError
from ...types import (
    DEFAULT_MAX_NEW_TOKENS,
    CancelToken,
    GenerationParams,
    Message,
    ProviderStatus,
    StreamEvent,
)
from .. import KINDS
from ..base import Provider
from .pool import ModelPool, Weights, estimate_bytes
from .text import IncrementalDetokenizer, StopAt, render_template, reply

__all__ = ["IncrementalDetokenizer", "LocalProvider", "render_template"]

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
# Pre-quantized checkpoints (config.json quantization_config.quant_method) -> {module: pip package}
QUANT_PACKAGES = {"awq": {"awq": "autoawq"}, "gptq": {"gptqmodel": "gptqmodel", "optimum": "optimum"},
                  "bitsandbytes": {"bitsandbytes": "bitsandbytes"}}
MAX_CONTEXT = 32768          # cap on a model's own max_position_embeddings (memory, not the model, limits us)
BATCH_STREAMS = 16           # streams one model serves at once with the batching engine (max_concurrency)


class LocalProvider(Provider):
    """A transformers causal LM from a hub id (read from the local HF cache) or a local folder."""

    kind = "local"
    style_mode = "prefix"       # small local models follow an instruction in the prompt best
    # No router slot: the engine decides. Plain generate runs one at a time per model (Weights.solo);
    # the batching engine serves up to max_concurrency (default BATCH_STREAMS) streams at once.
    default_concurrency = None
    honours = KINDS["local"].honours
    loaded = property(lambda self: self._weights is not None)
    model = property(lambda self: getattr(self._weights, "model", None))
    tokenizer = property(lambda self: getattr(self._weights, "tokenizer", None))

    def __init__(self, config, env=None):
        super().__init__(config, env)
        self._lock = threading.Lock()
        self._weights: Weights | None = None   # from the pool: maybe shared with another provider

    def dropped(self, weights: Weights) -> None:
        """The pool unloaded these weights (to make room): load again on the next use."""
        with self._lock:
            if self._weights is weights:
                self._weights = None

    def load(self, progress: Progress | None = None) -> None:
        """Load tokenizer and weights once; later calls return at once. `progress(fraction, message)`."""
        if self._weights is not None:
            return
        with self._lock:    # two first callers: the second waits, then finds the model loaded
            if self._weights is not None:
                return
            report = progress or (lambda fraction, message: None)
            path, problem = self._problem()
            if problem is not None:
                raise problem
            engine = _engine(self.name)     # torch and transformers: only now
            device, dtype = engine.placement(self.config, log)
            start = time.perf_counter()
            dtype_name = str(dtype).removeprefix("torch.")
            key = (str(path.resolve()), dtype_name, device, self.config.quantization or "")
            loader = functools.partial(self._loaded, engine, path, device, dtype, report)
            self._weights = POOL.load(self, key, estimate_bytes(path, dtype_name, self.config.quantization),
                                      loader, self.name)
            log.info("%s: loaded %s on %s (%s) in %.1fs", self.name, self.config.model, device, dtype,
                     time.perf_counter() - start)
            report(1.0, f"{self.config.display_name} is ready")

    def _loaded(self, engine: Any, path: Path, device: str, dtype: Any, report: Progress) -> dict[str, Any]:
        """The loaded parts, with the batching engine if config.engine (auto: CUDA) asks and it runs."""
        tokenizer, model = engine.load(self.config, path, device, dtype, report, self._fix())
        special = engine.special_ids(tokenizer, model)
        weights = {"tokenizer": tokenizer, "model": model, "special": special}
        choice = self.config.engine
        if choice == "batched" or (choice == "auto" and device.startswith("cuda")):
            report(0.85, f"{self.config.display_name}: warming up the batching engine")
            before = engine.allocated(device)
            try:
                from .batch import Batcher
                batcher = Batcher(model, special, self.config.max_concurrency or BATCH_STREAMS, self.name)
            except Exception as e:  # noqa: BLE001 - any failure here leaves plain generate, which works
                log.warning("%s: continuous batching is unavailable for %s (%s: %s); using generate, one "
                            "stream at a time", self.name, self.config.model, type(e).__name__, e)
            else:
                log.info("%s: continuous batching on, %d streams at once", self.name, batcher.streams)
                return weights | {"engine": batcher, "extra_bytes": engine.allocated(device) - before}
        report(0.9, f"{self.config.display_name}: warming up")
        engine.warm_up(model, special)
        return weights

    def _files(self) -> Path | None:
        if model_is_path(self.config):
            path = Path(self.config.model).expanduser()
            return path if (path / "config.json").is_file() else None
        from huggingface_hub import try_to_load_from_cache
        try:
            cached = try_to_load_from_cache(self.config.model, "config.json", cache_dir=hub_location()[1])
        except ValueError:      # not a valid repo id
            return None
        return Path(cached).parent if isinstance(cached, str) else None

    def _problem(self) -> tuple[Path | None, NotReadyError | None]:
        """The model's folder and, if it cannot load, why: files, model type, custom code, packages."""
        path, model, quant = self._files(), self.config.model, self.config.quantization
        if path is None:
            return None, NotReadyError(f"weights for {model} not found locally", fix=self._fix())
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return path, NotReadyError(f"{path / 'config.json'} is unreadable: {e}", fix=self._fix())
        model_type = config.get("model_type")
        known, version = transformers_model_types()
        native = str(model_type).replace("-", "_") in known
        if not native and "auto_map" not in config:
            return path, NotReadyError(f"{model}: model type {model_type!r} is unknown to transformers "
                                       f"{version}", fix="pip install -U transformers")
        if not native and not self.config.trust_remote_code:
            return path, NotReadyError(f"{model} needs custom code from its repository",
                                       fix=f"set trust_remote_code: true for provider {self.name} in "
                                           "configs.yaml (only for repositories you trust)")
        # bitsandbytes for `quantization`; a pre-quantized (AWQ, GPTQ...) checkpoint's own package
        settings = config.get("quantization_config")
        method = settings.get("quant_method") if isinstance(settings, dict) else None
        needs = ({"bitsandbytes": "bitsandbytes"} if quant else {}) | QUANT_PACKAGES.get(method, {})
        missing = [pip for module, pip in needs.items() if importlib.util.find_spec(module) is None]
        if not missing:
            return path, None
        why = f"{quant} quantization" if quant else f"its {method} weights"
        return path, NotReadyError(f"{model}: {why} need {', '.join(missing)}, which is not installed",
                                   fix=f"pip install {' '.join(missing)}")

    def _fix(self) -> str:
        if model_is_path(self.config) and not self.config.download:
            return (f"put the model files in {self.config.model}, or set download: <hub id> "
                    f"for provider {self.name} in configs.yaml")
        return f"python -m llm download {self.name}"

    def status(self) -> ProviderStatus:
        """Ready if loaded or its files are on disk; reads config.json at most, never torch or the weights."""
        if self.loaded:
            return ProviderStatus(True)
        missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
        if missing:
            return ProviderStatus(False, f"{' and '.join(missing)} not installed",
                                  f"pip install {' '.join(missing)}")
        problem = self._problem()[1]
        return ProviderStatus(True) if problem is None else ProviderStatus(False, problem.message,
                                                                           problem.fix)

    def close(self) -> None:
        """Let go of the weights (freed when no other provider shares them); a later call loads again."""
        with self._lock:
            weights, self._weights = self._weights, None
        if weights is not None:
            POOL.release(self, weights)

    def render_prompt(self, messages: list[Message]) -> str:
        self.load()
        if self.tokenizer.chat_template:
            try:
                return self.tokenizer.apply_chat_template([m.as_dict() for m in messages], tokenize=False,
                                                          add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001 - jinja2 errors and raise_exception() in templates
                raise InvalidRequestError(f"the chat template of {self.config.model} rejected "
                                          f"these messages: {e}") from e
        if not self.config.prompt_template:
            raise ConfigError(f"{self.config.model} has no chat template and provider {self.name} "
                              "has no prompt_template", fix=f"set prompt_template for provider {self.name} "
                              "in configs.yaml, with {system}, {history} and {prompt}")
        return render_template(self.config.prompt_template, messages)

    def text_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return super().text_tokens(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def context_window(self) -> int:
        own = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return min(own, self.config.context_window or MAX_CONTEXT) if own else super().context_window

    def fit(self, messages: list[Message], reserve: int) -> list[Message]:
        """Fit with the real tokenizer and window: load first (the call is about to generate anyway)."""
        self.load()
        return super().fit(messages, reserve)

    def generate_kwargs(self, params: GenerationParams, weights: Weights | None = None) -> dict[str, Any]:
        """Arguments for `model.generate` from the call's params (a subclass may add more)."""
        weights = weights or self._weights
        names = (() if params.greedy else ("temperature", "top_p", "top_k")) + ("repetition_penalty",)
        return {"max_new_tokens": params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                "do_sample": not params.greedy, **(weights.special if weights is not None else {}),
                **{name: value for name in names if (value := getattr(params, name)) is not None}}

    def batch_request(self, weights: Weights, params: GenerationParams) -> dict[str, Any] | None:
        """The batching engine's arguments for this call (a subclass may add more); None: plain generate."""
        if weights.engine is None or params.seed is not None or params.repetition_penalty is not None:
            return None
        return weights.engine.sampling(params.greedy, params.temperature, params.top_p, params.top_k)

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str | StreamEvent]:
        """Text as tokens arrive, from the batching engine or plain generate, then the finish reason."""
        while True:     # held for this generation (POOL.done lets go); loaded again if the pool dropped it
            self.load()
            weights = self._weights
            if weights is not None and POOL.hold(weights):
                break
        try:
            tokenizer = weights.tokenizer
            prompt = self.render_prompt(messages)
            ids = tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]
            max_new = params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
            eos = weights.special["eos_token_id"]
            request = self.batch_request(weights, params)
            chunks = (self._generate(weights, ids, params, cancel) if request is None
                      else weights.engine.stream(ids, max_new, request, cancel))
            with contextlib.closing(chunks):    # a reply cut short stops its generation now
                yield from reply(chunks, tokenizer, StopAt(params.stop),
                                 set(eos) if isinstance(eos, list) else {eos}, max_new, cancel)
        finally:
            POOL.done(weights)     # until here, the pool never unloads these weights

    def _generate(self, weights: Weights, ids: list[int], params: GenerationParams,
                  cancel: CancelToken) -> Iterator[list[int]]:
        """Plain `model.generate`, one call at a time per model; waiting gives up when cancelled."""
        engine = _engine(self.name)
        while not weights.solo.acquire(timeout=0.05):
            if cancel.cancelled:
                raise CancelledError("generation cancelled while waiting for the model")
        try:
            # A seed pauses the batching engine: it shares the RNG, and the seed must make the reply repeat
            seeded = params.seed is not None and weights.engine is not None
            with weights.engine.paused() if seeded else contextlib.nullcontext():
                yield from engine.tokens(weights.model, ids, self.generate_kwargs(params, weights), cancel,
                                         self.name, params.seed)
        finally:
            weights.solo.release()


@functools.cache
def transformers_model_types() -> tuple[frozenset[str], str]:
    """The installed transformers' model types (`models/` folders) and version, from its files: no torch."""
    try:
        version = importlib.metadata.version("transformers")
        spec = importlib.util.find_spec("transformers")
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return frozenset(), "(not installed)"
    if spec is None or spec.origin is None:
        return frozenset(), version
    models = Path(spec.origin).parent / "models"
    return frozenset(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith("_")), version


def _engine(name: str) -> Any:
    try:
        from . import engine
    except ImportError as e:
        raise NotReadyError(f"{name} needs torch and transformers: {e}",
                            fix="pip install torch transformers") from e
    return engine


POOL = ModelPool(unload=lambda weights: _engine("local").free(weights))
