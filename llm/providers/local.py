"""Local transformers models: loaded once on first use, shared, streamed token by token."""

from __future__ import annotations

import functools
import gc
import importlib.metadata
import importlib.util
import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..download import hub_location, model_is_path
from ..errors import CancelledError, ConfigError, InvalidRequestError, NotReadyError
from ..types import (
    DEFAULT_MAX_NEW_TOKENS,
    CancelToken,
    GenerationParams,
    Message,
    ProviderStatus,
    StreamEvent,
    history_pairs,
)
from . import HONOURS
from .base import Provider
from .local_pool import ModelPool, Weights, estimate_bytes
from .wire import StopAt

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
# Pre-quantized checkpoints (config.json quantization_config.quant_method) -> {module: pip package}
QUANT_PACKAGES = {"awq": {"awq": "autoawq"}, "gptq": {"gptqmodel": "gptqmodel", "optimum": "optimum"},
                  "bitsandbytes": {"bitsandbytes": "bitsandbytes"}}
MAX_CONTEXT = 32768          # cap on a model's own max_position_embeddings (memory, not the model, limits us)
_PLACEHOLDER = re.compile(r"\{(system|history|prompt)\}")


class IncrementalDetokenizer:
    """Token ids in, text deltas out, decoding only a short window of recent tokens (linear in length).

    The prefix/read offsets are vLLM's and TGI's technique: decode [prefix:read] and [prefix:], and emit
    the difference once it does not end in an incomplete character ("\\ufffd"). The prefix tokens give
    the decoder context, so SentencePiece's leading spaces come out right.
    """

    MAX_PENDING = 8     # a run of undecodable bytes longer than any UTF-8 char is emitted anyway

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = self.read_offset = 0
        self.decode_calls = self.decoded_tokens = 0     # cost counters for tests and the bench

    def add(self, ids: Sequence[int]) -> str:
        """Take new token ids; return the text they complete (maybe empty)."""
        self.ids.extend(ids)
        return self._step(force=len(self.ids) - self.read_offset >= self.MAX_PENDING)

    def flush(self) -> str:
        """The text still held back at the end of the stream."""
        return self._step(force=True) if self.read_offset < len(self.ids) else ""

    def _step(self, force: bool) -> str:
        prefix_text = self._decode(self.prefix_offset, self.read_offset)
        text = self._decode(self.prefix_offset, len(self.ids))
        if not force and (len(text) <= len(prefix_text) or text.endswith("\ufffd")):
            return ""
        if force:   # no clean boundary: restart the window with no context
            self.prefix_offset = self.read_offset = len(self.ids)
            return text[len(prefix_text):] if text.startswith(prefix_text) else text
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(prefix_text):]

    def _decode(self, start: int, end: int) -> str:
        if start >= end:
            return ""
        self.decode_calls += 1
        self.decoded_tokens += end - start
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)


def render_template(template: str, messages: list[Message]) -> str:
    """A base-model prompt: {system}, {history} as upstream Linly "User: ... Bot: ..." turns, {prompt}."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    turns = [m for m in messages if m.role != "system"]
    prompt = turns.pop().content if turns and turns[-1].role == "user" else ""
    history = "".join(f" User: {user} Bot: {bot}" for user, bot in history_pairs(turns))
    values = {"system": system, "history": history, "prompt": prompt}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template).lstrip()


class LocalProvider(Provider):
    """A transformers causal LM from a hub id (read from the local HF cache) or a local folder."""

    kind = "local"
    style_mode = "prefix"       # small local models follow an instruction in the prompt best
    default_concurrency = 1     # one generation at a time per model: they share the GPU anyway
    honours = HONOURS["local"]

    def __init__(self, config, env=None):
        super().__init__(config, env)
        self._lock = threading.Lock()
        self._weights: Weights | None = None   # from the pool: maybe shared with another provider
        self._device = "cpu"

    # ---- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._weights is not None

    @property
    def model(self) -> Any:
        return self._weights.model if self._weights is not None else None

    @property
    def tokenizer(self) -> Any:
        return self._weights.tokenizer if self._weights is not None else None

    _model, _tokenizer = model, tokenizer

    @property
    def _special(self) -> dict[str, Any]:
        """pad and eos ids for generate."""
        return self._weights.special if self._weights is not None else {}

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
            path = self._files()
            if path is None:
                raise NotReadyError(f"weights for {self.config.model} not found locally", fix=self._fix())
            problem = self._code_problem(path) or self._package_problem(path)
            if problem is not None:
                raise problem
            engine = _engine(self.name)     # torch and transformers: only now
            device, dtype = engine.placement(self.config, log)
            start = time.perf_counter()
            quantization = self.config.quantization
            dtype_name = str(dtype).removeprefix("torch.")
            key = (str(path.resolve()), dtype_name, device, quantization or "")

            def loader() -> tuple[Any, Any, dict]:
                tokenizer, model = engine.load(self.config, path, device, dtype, report, self._fix())
                return tokenizer, model, engine.special_ids(tokenizer, model)

            self._weights = POOL.load(self, key, estimate_bytes(path, dtype_name, quantization), loader,
                                      self.name)
            self._device = device
            log.info("%s: loaded %s on %s (%s) in %.1fs", self.name, self.config.model, device, dtype,
                     time.perf_counter() - start)
            report(1.0, f"{self.config.display_name} is ready")

    def _held(self) -> Weights:
        """The loaded weights, held for one generation (POOL.done lets go); loaded first, and again if
        the pool unloaded them meanwhile."""
        while True:
            self.load()
            weights = self._weights
            if weights is not None and POOL.hold(weights):
                return weights

    def _files(self) -> Path | None:
        """The folder holding config.json: the local dir, or the hub id's cached snapshot; None if absent."""
        if model_is_path(self.config):
            path = Path(self.config.model).expanduser()
            return path if (path / "config.json").is_file() else None
        from huggingface_hub import try_to_load_from_cache
        try:
            cached = try_to_load_from_cache(self.config.model, "config.json", cache_dir=hub_location()[1])
        except ValueError:      # not a valid repo id
            return None
        return Path(cached).parent if isinstance(cached, str) else None

    def _code_problem(self, path: Path) -> NotReadyError | None:
        """Why this model cannot load without running its repository's code, if it cannot."""
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            return NotReadyError(f"{path / 'config.json'} is unreadable: {e}", fix=self._fix())
        model_type = config.get("model_type")
        known, version = transformers_model_types()
        native = str(model_type).replace("-", "_") in known
        if native or (self.config.trust_remote_code and "auto_map" in config):
            return None
        if "auto_map" in config:
            return NotReadyError(f"{self.config.model} needs custom code from its repository",
                                 fix=f"set trust_remote_code: true for provider {self.name} in configs.yaml "
                                     "(only for repositories you trust)")
        return NotReadyError(f"{self.config.model}: model type {model_type!r} is unknown to transformers "
                             f"{version}", fix="pip install -U transformers")

    def _fix(self) -> str:
        if model_is_path(self.config) and not self.config.download:
            return (f"put the model files in {self.config.model}, or set download: <hub id> "
                    f"for provider {self.name} in configs.yaml")
        return f"python -m llm download {self.name}"

    def status(self) -> ProviderStatus:
        """Ready if loaded or the files are on disk; reads at most config.json, never the weights, and
        imports neither torch nor transformers (a process that never uses a local model never does)."""
        if self.loaded:
            return ProviderStatus(True)
        missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
        if missing:
            return ProviderStatus(False, f"{' and '.join(missing)} not installed",
                                  f"pip install {' '.join(missing)}")
        path = self._files()
        if path is None:
            return ProviderStatus(False, f"weights for {self.config.model} not found locally", self._fix())
        problem = self._code_problem(path) or self._package_problem(path)
        if problem is not None:
            return ProviderStatus(False, problem.message, problem.fix)
        return ProviderStatus(True)

    def _package_problem(self, path: Path) -> NotReadyError | None:
        """A quantization package this model needs and is missing: bitsandbytes for `quantization`,
        or the package of a pre-quantized AWQ/GPTQ checkpoint."""
        needs = {"bitsandbytes": "bitsandbytes"} if self.config.quantization else {}
        try:
            method = json.loads((path / "config.json").read_text(encoding="utf-8")) \
                .get("quantization_config", {}).get("quant_method")
        except (OSError, ValueError, AttributeError):
            method = None
        needs |= QUANT_PACKAGES.get(method, {})
        missing = [pip for module, pip in needs.items() if importlib.util.find_spec(module) is None]
        if not missing:
            return None
        quant = self.config.quantization
        why = f"{quant} quantization" if quant else f"its {method} weights"
        return NotReadyError(f"{self.config.model}: {why} need {', '.join(missing)}, which is not installed",
                             fix=f"pip install {' '.join(missing)}")

    def close(self) -> None:
        """Let go of the weights (freed when no other provider shares them); a later call loads again."""
        with self._lock:
            weights, self._weights = self._weights, None
        if weights is not None:
            POOL.release(self, weights)

    # ---- prompts and tokens ----------------------------------------------------------------

    def render_prompt(self, messages: list[Message]) -> str:
        """The prompt text: the tokenizer's chat template, else the configured prompt_template."""
        self.load()
        if self._tokenizer.chat_template:
            try:
                return self._tokenizer.apply_chat_template([m.as_dict() for m in messages], tokenize=False,
                                                           add_generation_prompt=True)
            except Exception as e:  # noqa: BLE001 - jinja2 errors and raise_exception() in templates
                raise InvalidRequestError(f"the chat template of {self.config.model} rejected "
                                          f"these messages: {e}") from e
        if not self.config.prompt_template:
            raise ConfigError(f"{self.config.model} has no chat template and provider {self.name} "
                              "has no prompt_template",
                              fix=f"set prompt_template for provider {self.name} in configs.yaml, "
                                  "with {system}, {history} and {prompt}")
        return render_template(self.config.prompt_template, messages)

    def text_tokens(self, text: str) -> int:
        """The tokenizer's count once loaded; an estimate before."""
        if self._tokenizer is None:
            return super().text_tokens(text)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    @property
    def context_window(self) -> int:
        model = self._model
        own = getattr(model.config, "max_position_embeddings", None) if model is not None else None
        if not own:
            return super().context_window
        return min(own, self.config.context_window or MAX_CONTEXT)

    def fit(self, messages: list[Message], reserve: int) -> list[Message]:
        """Fit with the real tokenizer and window: load first (the call is about to generate anyway)."""
        self.load()
        return super().fit(messages, reserve)

    # ---- generation ------------------------------------------------------------------------

    def generate_kwargs(self, params: GenerationParams) -> dict[str, Any]:
        """Arguments for `model.generate` from the call's params (a subclass may add more)."""
        kw: dict[str, Any] = {"max_new_tokens": params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS,
                              "do_sample": not params.greedy, **self._special}
        if not params.greedy:
            kw.update({k: getattr(params, k) for k in ("temperature", "top_p", "top_k")
                       if getattr(params, k) is not None})
        if params.repetition_penalty is not None:
            kw["repetition_penalty"] = params.repetition_penalty
        return kw

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str | StreamEvent]:
        """Generate in a worker thread; yield text as tokens arrive; stop it when closed or cancelled,
        or at a `stop` string (which is not part of the reply, as with OpenAI). Ends with the finish
        reason: "length" when max_new_tokens ran out."""
        weights = self._held()
        try:
            yield from self._generate(weights, messages, params, cancel)
        finally:
            POOL.done(weights)     # until here, the pool never unloads these weights

    def _generate(self, weights: Weights, messages: list[Message], params: GenerationParams,
                  cancel: CancelToken) -> Iterator[str | StreamEvent]:
        engine = _engine(self.name)
        model, tokenizer = weights.model, weights.tokenizer
        inputs = tokenizer(self.render_prompt(messages), return_tensors="pt",
                           add_special_tokens=not tokenizer.chat_template).to(self._device)
        tokens, closed = engine.TokenQueue(), threading.Event()
        kwargs = self.generate_kwargs(params) | {"streamer": tokens,
                                                  "stopping_criteria": engine.stopping(cancel, closed)}
        if params.seed is not None:
            engine.seed(params.seed)
        worker = threading.Thread(target=engine.generate, args=(model, dict(inputs), kwargs, tokens.queue),
                                  name=f"generate-{self.name}", daemon=True)
        worker.start()
        detokenizer, stop = IncrementalDetokenizer(tokenizer), StopAt(params.stop)
        eos = weights.special["eos_token_id"]
        eos = set(eos) if isinstance(eos, list) else {eos}
        try:
            while (item := tokens.queue.get()) is not engine.END:
                if isinstance(item, BaseException):
                    raise engine.generation_error(self.name, item) from item
                if cancel.cancelled:
                    break
                text = stop.feed(detokenizer.add(item))
                if text:
                    yield text
                if stop.hit:
                    yield StreamEvent(finish_reason="stop")
                    return
            if cancel.cancelled:
                raise CancelledError("generation cancelled")
            rest = stop.feed(detokenizer.flush()) + stop.flush()
            if rest:
                yield rest
            ids = detokenizer.ids
            ran_out = len(ids) >= kwargs["max_new_tokens"] and not (ids and ids[-1] in eos)
            yield StreamEvent(finish_reason="length" if ran_out else "stop")
        finally:    # also runs when the caller closes us early: stop generating, free the GPU slot
            closed.set()
            worker.join()


@functools.cache
def transformers_model_types() -> tuple[frozenset[str], str]:
    """The model types the installed transformers ships (its `models/` folders) and its version, read
    from its files: importing transformers to ask would import torch, seconds for a status check."""
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
    """The torch side of local models (`local_engine`), imported on first use."""
    try:
        from . import local_engine
    except ImportError as e:
        raise NotReadyError(f"{name} needs torch and transformers: {e}",
                            fix="pip install torch transformers") from e
    return local_engine


def _free(weights: Weights) -> None:
    """The pool's unload: drop the last references, collect the module graph's cycles, and hand the
    CUDA cache back, so the memory is free for the next model now, not at some later GC."""
    weights.model = weights.tokenizer = None
    gc.collect()
    if weights.key[2].startswith("cuda"):
        _engine("local").free(weights.key[2])


POOL = ModelPool(unload=_free)
