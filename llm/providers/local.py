"""Local transformers models: loaded once on first use, shared, streamed token by token."""

from __future__ import annotations

import gc
import json
import logging
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import transformers
from huggingface_hub import try_to_load_from_cache
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from ..download import hub_location, model_is_path
from ..errors import CancelledError, ConfigError, InvalidRequestError, NotReadyError, UpstreamError
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
from .base import Provider, StopAt

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
MAX_CONTEXT = 32768          # cap on a model's own max_position_embeddings (memory, not the model, limits us)
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_PLACEHOLDER = re.compile(r"\{(system|history|prompt)\}")
_END = object()


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


class _TokenQueue(BaseStreamer):
    """Hands each generated token id list to the consuming generator (generate's first put is the prompt)."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.queue.put(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        """Nothing: the worker thread queues the end itself, after errors too."""


class _StopWhen(StoppingCriteria):
    """Stops generate at the next token once the call is cancelled or its generator closed."""

    def __init__(self, cancel: CancelToken, closed: threading.Event):
        self.cancel, self.closed = cancel, closed

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        stop = self.cancel.cancelled or self.closed.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


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
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._special: dict[str, Any] = {}     # pad and eos ids for generate

    # ---- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def load(self, progress: Progress | None = None) -> None:
        """Load tokenizer and weights once; later calls return at once. `progress(fraction, message)`."""
        if self._model is not None:
            return
        with self._lock:    # two first callers: the second waits, then finds the model loaded
            if self._model is not None:
                return
            report = progress or (lambda fraction, message: None)
            path = self._files()
            if path is None:
                raise NotReadyError(f"weights for {self.config.model} not found locally", fix=self._fix())
            problem = self._code_problem(path)
            if problem is not None:
                raise problem
            device, dtype = self._placement()
            start = time.perf_counter()
            tokenizer, model = self._load_from(path, device, dtype, report)
            self._special = _special_ids(tokenizer, model)
            self._tokenizer, self._device, self._model = tokenizer, device, model
            log.info("%s: loaded %s on %s (%s) in %.1fs", self.name, self.config.model, device, dtype,
                     time.perf_counter() - start)
            report(1.0, f"{self.config.display_name} is ready")

    def _load_from(self, path: Path, device: str, dtype: torch.dtype, report: Progress) -> tuple[Any, Any]:
        trust = self.config.trust_remote_code
        label = self.config.display_name
        try:
            report(0.1, f"{label}: loading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
            report(0.3, f"{label}: loading the weights ({str(dtype).removeprefix('torch.')})")
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
            report(0.8, f"{label}: moving the model to {device}")
            if device.startswith("cuda"):
                # cuDNN attention builds a graph per new sequence length, cached per thread: decoding
                # ran ~3x slower (bench/local_bench.py); flash/mem-efficient need none. Process-wide.
                torch.backends.cuda.enable_cudnn_sdp(False)
            return tokenizer, model.to(device).eval()
        except torch.cuda.OutOfMemoryError as e:
            raise NotReadyError(f"not enough GPU memory to load {self.config.model}",
                                fix=f"use a smaller model or set dtype/device for provider {self.name} "
                                    "in configs.yaml") from e
        except (OSError, ValueError, RuntimeError, ImportError, KeyError) as e:
            raise NotReadyError(f"could not load {self.config.model}: {e}", fix=self._fix()) from e

    def _placement(self) -> tuple[str, torch.dtype]:
        device = self.config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
            if device == "cpu":
                log.warning("%s: no CUDA GPU found, running %s on the CPU: expect slow replies",
                            self.name, self.config.model)
        elif device.startswith("cuda") and not torch.cuda.is_available():
            raise NotReadyError(f"{self.name}: device {device} is set but CUDA is not available",
                                fix=f"set device: auto or cpu for provider {self.name} in configs.yaml")
        if self.config.dtype != "auto":
            return device, _DTYPES[self.config.dtype]
        if not device.startswith("cuda"):
            return device, torch.float32    # CPU half precision is slow or unsupported
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def _files(self) -> Path | None:
        """The folder holding config.json: the local dir, or the hub id's cached snapshot; None if absent."""
        if model_is_path(self.config):
            path = Path(self.config.model).expanduser()
            return path if (path / "config.json").is_file() else None
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
        if model_type in CONFIG_MAPPING or (self.config.trust_remote_code and "auto_map" in config):
            return None
        if "auto_map" in config:
            return NotReadyError(f"{self.config.model} needs custom code from its repository",
                                 fix=f"set trust_remote_code: true for provider {self.name} in configs.yaml "
                                     "(only for repositories you trust)")
        return NotReadyError(f"{self.config.model}: model type {model_type!r} is unknown to transformers "
                             f"{transformers.__version__}", fix="pip install -U transformers")

    def _fix(self) -> str:
        if model_is_path(self.config) and not self.config.download:
            return (f"put the model files in {self.config.model}, or set download: <hub id> "
                    f"for provider {self.name} in configs.yaml")
        return f"python -m llm download {self.name}"

    def status(self) -> ProviderStatus:
        """Ready if loaded or the files are on disk; reads at most config.json, never the weights."""
        if self.loaded:
            return ProviderStatus(True)
        path = self._files()
        if path is None:
            return ProviderStatus(False, f"weights for {self.config.model} not found locally", self._fix())
        problem = self._code_problem(path)
        if problem is not None:
            return ProviderStatus(False, problem.message, problem.fix)
        return ProviderStatus(True)

    def close(self) -> None:
        """Free the weights; a later call loads them again."""
        with self._lock:
            if self._model is None:
                return
            self._model = self._tokenizer = None
        gc.collect()    # module graphs hold reference cycles: free the weights now, not at some later GC
        if self._device.startswith("cuda"):
            torch.cuda.empty_cache()

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
        self.load()
        model, tokenizer = self._model, self._tokenizer
        inputs = tokenizer(self.render_prompt(messages), return_tensors="pt",
                           add_special_tokens=not tokenizer.chat_template).to(self._device)
        tokens, closed = _TokenQueue(), threading.Event()
        kwargs = self.generate_kwargs(params) | {
            "streamer": tokens, "stopping_criteria": StoppingCriteriaList([_StopWhen(cancel, closed)])}
        if params.seed is not None:
            torch.manual_seed(params.seed)  # the sampling RNG; one generation per model at a time (the slot)
        worker = threading.Thread(target=_generate, args=(model, dict(inputs), kwargs, tokens.queue),
                                  name=f"generate-{self.name}", daemon=True)
        worker.start()
        detokenizer, stop = IncrementalDetokenizer(tokenizer), StopAt(params.stop)
        eos = self._special["eos_token_id"]
        eos = set(eos) if isinstance(eos, list) else {eos}
        try:
            while (item := tokens.queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise self._generation_error(item) from item
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

    def _generation_error(self, e: BaseException) -> UpstreamError:
        if isinstance(e, torch.cuda.OutOfMemoryError):
            return UpstreamError(f"{self.name} ran out of GPU memory while generating", status=503,
                                 fix="lower max_new_tokens, shorten the history or use a smaller model")
        return UpstreamError(f"{self.name} failed while generating: {type(e).__name__}: {e}")


def _special_ids(tokenizer: Any, model: Any) -> dict[str, Any]:
    """eos from the generation config (else the tokenizer); pad = eos when the tokenizer has none."""
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return {"eos_token_id": eos, "pad_token_id": pad}


def _generate(model: Any, inputs: dict, kwargs: dict, out: queue.SimpleQueue) -> None:
    """The worker thread: run generate; queue any error, then the end marker."""
    try:
        with torch.inference_mode():
            model.generate(**inputs, **kwargs)
    except BaseException as e:  # noqa: BLE001 - re-raised as a typed error by the consumer
        out.put(e)
    finally:
        out.put(_END)
