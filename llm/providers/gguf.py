"""Quantized GGUF models on the CPU, in-process, through llama-cpp-python (llama.cpp).

`model:` is a path to a .gguf file, or `repo_id:file-or-glob` of a Hugging Face repo with GGUF files (read
from the local HF cache; `quantization: q4_k_m` picks the file when only the repo is named). Whether it is
ready is read from the file's header alone: llama_cpp is imported with the first generation, never by
status(). Each generation slot (`max_concurrency`, default 1) has a `Llama` of its own, since one is not
thread-safe: they map the same file, so the weights are in memory once and each slot adds its KV cache.
"""

from __future__ import annotations

import codecs
import concurrent.futures
import contextlib
import ctypes
import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CancelledError, ConfigError, InvalidRequestError, NotReadyError, UpstreamError
from ..types import (
    DEFAULT_MAX_NEW_TOKENS,
    CancelToken,
    GenerationParams,
    Message,
    ProviderStatus,
    StreamEvent,
)
from . import KINDS
from .base import Provider
from .gguf_files import (  # noqa: F401 - read_header, shards, matching: the file's API, used from here too
    BadGGUF,
    Header,
    Source,
    cached_files,
    inspect,
    matching,
    memory,
    physical_cores,
    read_header,
    shards,
    source,
)
from .local.text import StopAt, render_template

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
PACKAGE = "llama-cpp-python"
BUILD_NOTE = ("pip compiles llama.cpp where no wheel fits: about 10-15 minutes, with a C++ compiler "
              "(apt-get install build-essential)")
DEFAULT_N_CTX = 8192        # the context when context_window is unset (the file's own, if smaller)
# llama.cpp's own sampling defaults, for what neither the call nor the config sets
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40}
MIN_P = 0.05                # llama.cpp's default: drops tokens under 5% of the likeliest one's probability


# ---- the provider -----------------------------------------------------------------------------------------

class GGUFProvider(Provider):
    """A GGUF model run by llama.cpp in this process, on the CPU. Loaded once, on first use; one `Llama` per
    generation slot (made when a slot first needs one), sharing the mapped weights; a slot's own KV cache
    keeps its last prompt, so the next turn of that conversation only reads its new tokens."""

    kind = "gguf"
    style_mode = "prefix"       # small local models follow an instruction in the prompt best
    default_concurrency = 1     # the router's slots; this provider makes at most as many Llamas
    honours = KINDS["gguf"].honours
    loaded = property(lambda self: self._first is not None)

    def __init__(self, config, env=None):
        super().__init__(config, env)
        self._load_lock = threading.Lock()  # one load at a time
        self._cond = threading.Condition()  # guards the fields below
        self._first: Any = None             # the first Llama: also the tokenizer any thread may use
        self._chat: Any = None              # the chat template's formatter (None: prompt_template)
        self._idle: list[Any] = []          # Llamas free to generate
        self._made = 0                      # Llamas of this epoch, idle or generating
        self._epoch = 0                     # close() starts a new one; older Llamas are dropped when done
        self.loads = 0                      # Llamas made (for tests and logs)

    @property
    def slots(self) -> int:
        return self.config.max_concurrency or self.default_concurrency

    @property
    def threads(self) -> int:
        """Threads per Llama: the physical cores shared by the slots (more would only make them wait)."""
        return max(1, physical_cores() // self.slots)

    # ---- readiness, from files -------------------------------------------------------------------------

    def source(self) -> Source:
        return source(self.config.model, self.config.quantization)

    def locate(self) -> tuple[Path | None, NotReadyError | None]:
        """The .gguf file (a split model's first) and, if llama.cpp cannot load it, why, with the fix."""
        src = self.source()
        if src.path is not None:
            files = [src.path] if src.path.is_file() else []
            if not files:
                why = "is a folder, not a .gguf file" if src.path.is_dir() else "does not exist"
                return None, NotReadyError(f"{src.path} {why}", fix=self._fix_missing())
        else:
            from ..download import hub_location
            files = cached_files(src.repo, src.pattern, hub_location()[1])
            if not files:
                return None, NotReadyError(f"no file matching {src.pattern} of {src.repo} is in the Hugging "
                                           "Face cache", fix=self._fix_missing())
            firsts = sorted({shards(f)[0] for f in files})
            if len(firsts) > 1:
                names = ", ".join(f.name for f in firsts[:6]) + (", ..." if len(firsts) > 6 else "")
                return None, NotReadyError(
                    f"{len(firsts)} files of {src.repo} match {src.pattern}: {names}",
                    fix=f"name one in model: {src.repo}:<file>, or set quantization (such as q4_k_m) for "
                        f"provider {self.name} in configs.yaml")
            files = firsts
        first = shards(files[0])[0]
        for part in shards(first):
            if not part.is_file():
                return None, NotReadyError(f"{part.name}, a part of the split model {first.name}, is missing",
                                           fix=self._fix_missing())
            found = inspect(part)
            if isinstance(found, str):
                return None, NotReadyError(found, fix=self._fix_broken(part))
        return first, None

    def _fix_missing(self) -> str:
        src = self.source()
        if src.path is not None and not self.config.download:
            return (f"put the .gguf file at {src.path}, or set download: <repo_id>:<file> for provider "
                    f"{self.name} in configs.yaml")
        return f"python -m llm download {self.name}"

    def _fix_broken(self, path: Path) -> str:
        if self.source().path is not None and not self.config.download:
            return f"replace {path} with a complete .gguf file (download or convert it again)"
        return f"delete {path.resolve()}, then run python -m llm download {self.name} again"

    def status(self) -> ProviderStatus:
        """Ready if loaded, or if llama-cpp-python is installed and the file's header is whole. Reads the
        header (cached) and the HF cache's folders; never imports llama_cpp."""
        if self.loaded:
            return ProviderStatus(True)
        if importlib.util.find_spec("llama_cpp") is None:
            return ProviderStatus(False, f"{PACKAGE} is not installed ({BUILD_NOTE})",
                                  f"pip install {PACKAGE}")
        problem = self.locate()[1]
        return ProviderStatus(True) if problem is None else ProviderStatus(False, problem.message,
                                                                           problem.fix)

    def header(self) -> Header | None:
        path, problem = self.locate()
        found = inspect(path) if problem is None and path is not None else None
        return found if isinstance(found, Header) else None

    @property
    def n_ctx(self) -> int:
        """Each slot's context: context_window, else DEFAULT_N_CTX, never more than the file's own length."""
        header = self.header()
        want = self.config.context_window or DEFAULT_N_CTX
        own = header.context_length if header is not None else None
        return min(want, own) if own else want

    @property
    def context_window(self) -> int:
        return self.n_ctx

    # ---- loading ---------------------------------------------------------------------------------------

    def load(self, progress: Progress | None = None) -> None:
        """Make the first Llama once (later calls return at once); `progress(fraction, message)`."""
        self._parts(progress)

    def _parts(self, progress: Progress | None = None) -> tuple[Any, Any]:
        """(the first Llama, the chat formatter), loading them the first time."""
        with self._cond:
            if self._first is not None:
                return self._first, self._chat
        report = progress or (lambda fraction, message: None)
        with self._load_lock:
            with self._cond:
                if self._first is not None:
                    return self._first, self._chat
                epoch = self._epoch
            report(0.1, f"{self.config.display_name}: loading {self.config.model}")
            llm = self._open(first=True)
            chat = self._formatter(llm)
            report(0.9, f"{self.config.display_name}: warming up")
            llm.decoder.submit(self._warm_up, llm).result()     # on its decoding thread, as every token
            with self._cond:
                if epoch == self._epoch:
                    self._first, self._chat = llm, chat
                    self._idle.append(llm)
                    self._made += 1
                    self._cond.notify()
            report(1.0, f"{self.config.display_name} is ready")
            return llm, chat

    def _open(self, first: bool = False) -> Any:
        """A new Llama on the file; NotReadyError naming the file and the fix when it cannot load."""
        path, problem = self.locate()
        if problem is not None:
            raise problem
        llama_cpp = _import(self.name)
        header = inspect(path)
        n_ctx, threads = self.n_ctx, self.threads
        if header.context_length and (self.config.context_window or 0) > header.context_length:
            log.warning("%s: context_window %d is more than %s was trained for; using %d", self.name,
                        self.config.context_window, path.name, header.context_length)
        weights = sum(p.stat().st_size for p in shards(path)) if first else 0
        self._check_memory(weights + n_ctx * header.kv_bytes_per_token(), path)
        start = time.perf_counter()
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(512, n_ctx),
                                  n_threads=threads, n_threads_batch=threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise NotReadyError(f"llama.cpp could not load {path}: {e}", fix=self._fix_broken(path)) from e
        self.loads += 1
        # Its one decoding thread: llama-cpp-python's OpenMP keeps a thread team per calling thread, so a
        # process that decodes from several threads has more threads than cores, and every token waits
        # (measured on 2 cores: 45 tokens/s from one thread, 28 once a second thread had decoded too).
        llm.decoder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"gguf-{self.name}")
        log.info("%s: loaded %s (%d tokens of context, %d threads) in %.2fs", self.name, path.name, n_ctx,
                 threads, time.perf_counter() - start)
        return llm

    def _check_memory(self, need: int, path: Path) -> None:
        """Refuse a model (or another slot) that cannot fit in RAM at all; warn when only paging fits it."""
        total, available = memory()
        gb = 1024 ** 3
        if total is not None and need > total:
            raise NotReadyError(
                f"{self.name} needs about {need / gb:.1f} GB of RAM for {path.name} (its weights and a KV "
                f"cache of {self.n_ctx} tokens per slot); this machine has {total / gb:.1f} GB",
                fix=f"use a smaller quantization (such as q4_k_m) or model, or lower context_window or "
                    f"max_concurrency for provider {self.name} in configs.yaml")
        if available is not None and need > available:
            log.warning("%s: %s needs about %.1f GB and %.1f GB of RAM are free: expect paging", self.name,
                        path.name, need / gb, available / gb)

    def _formatter(self, llm: Any) -> Any:
        """The file's chat template as llama-cpp-python renders it (None: the file has none)."""
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos, bos = (llm.detokenize([t], special=True).decode("utf-8", "replace") if t >= 0 else ""
                    for t in (llm.token_eos(), llm.token_bos()))
        return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)

    @staticmethod
    def _warm_up(llm: Any) -> None:
        """One token through the model, so its pages are read now rather than in the first user's reply."""
        token = llm.token_bos() if llm.token_bos() >= 0 else 0
        llm.eval([token])
        llm.reset()

    def close(self) -> None:
        """Let go of the Llamas (the memory is freed once the generations using one end)."""
        with self._load_lock, self._cond:
            for llm in self._idle:
                llm.decoder.shutdown(wait=False)
            self._epoch += 1
            self._first = self._chat = None
            self._idle.clear()
            self._made = 0
            self._cond.notify_all()

    # ---- prompts and tokens ----------------------------------------------------------------------------

    def render_prompt(self, messages: list[Message]) -> tuple[str, bool]:
        """The prompt text, and whether it came from the chat template (which spells out special tokens)."""
        _, chat = self._parts()
        if chat is not None:
            try:
                return chat(messages=[m.as_dict() for m in messages]).prompt, True
            except Exception as e:  # noqa: BLE001 - jinja2 errors and raise_exception() in templates
                raise InvalidRequestError(f"the chat template of {self.config.model} rejected these "
                                          f"messages: {e}") from e
        if not self.config.prompt_template:
            raise ConfigError(f"{self.config.model} has no chat template and provider {self.name} has no "
                              "prompt_template", fix=f"set prompt_template for provider {self.name} in "
                              "configs.yaml, with {system}, {history} and {prompt}")
        return render_template(self.config.prompt_template, messages), False

    def prompt_tokens(self, messages: list[Message]) -> list[int]:
        first, _ = self._parts()
        prompt, templated = self.render_prompt(messages)
        # a chat template writes its BOS itself; a prompt_template gets the model's
        add_bos = not templated and first._model.add_bos_token()
        return first.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=templated)

    def text_tokens(self, text: str) -> int:
        first = self._first
        if first is None:
            return super().text_tokens(text)
        return len(first.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ---- generating ------------------------------------------------------------------------------------

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: CancelToken) -> Iterator[str | StreamEvent]:
        """Text as tokens come, then the finish reason and usage. Stops before the next token once `cancel`
        is set or the stream is closed (budget, Stop, hang-up)."""
        self._parts()
        reserve = params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        messages = self.fit(messages, reserve)      # again, with the model's own tokenizer now
        tokens = self.prompt_tokens(messages)
        n_ctx = self.n_ctx
        if len(tokens) >= n_ctx:
            raise InvalidRequestError(f"the prompt is {len(tokens)} tokens and {self.name} has a context of "
                                      f"{n_ctx}", fix=f"shorten the prompt, or raise context_window for "
                                      f"provider {self.name} in configs.yaml")
        sampling = self.sampling(params)    # a bad logit_bias fails before a slot is taken
        llm, epoch = self._checkout(tokens, cancel)
        try:
            max_new = min(reserve, n_ctx - len(tokens))
            yield from self._generate(llm, tokens, params, sampling, max_new, cancel)
        except UpstreamError:
            llm.reset()     # a failed decode: the next generation starts from an empty cache
            raise
        finally:
            self._checkin(llm, epoch)

    def _generate(self, llm: Any, tokens: list[int], params: GenerationParams, sampling: dict[str, Any],
                  max_new: int, cancel: CancelToken) -> Iterator[str | StreamEvent]:
        llama_cpp = _import(self.name)
        vocab = llm._model.vocab
        if params.seed is None:
            llm.set_seed(llama_cpp.LLAMA_DEFAULT_SEED)      # a new random seed
        else:   # the whole prompt read again, as the first time: a reused cache's logits may differ in the
            llm.set_seed(params.seed % 0xFFFFFFFF)          # last bits, and a seed must repeat exactly
            llm.reset()
        stop, text = StopAt(params.stop), codecs.getincrementaldecoder("utf-8")("replace")
        piece = ctypes.create_string_buffer(256)
        made, finish = 0, "length"
        try:
            with contextlib.closing(llm.generate(tokens, reset=True, **sampling)) as steps:
                while made < max_new and not cancel.cancelled:     # checked before each next token
                    token = llm.decoder.submit(next, steps, None).result()   # decoded on the Llama's thread
                    if token is None:
                        break
                    made += 1
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    n = llama_cpp.llama_token_to_piece(vocab, token, piece, len(piece), 0, False)
                    delta = stop.feed(text.decode(piece.raw[:max(n, 0)]))
                    if delta:
                        yield delta
                    if stop.hit:
                        finish = "stop"
                        break
        except RuntimeError as e:   # llama_decode failed (out of memory, a full context)
            raise UpstreamError(f"{self.name} failed while generating: {e}") from e
        if cancel.cancelled:
            raise CancelledError("generation cancelled")
        if not stop.hit:
            rest = stop.feed(text.decode(b"", final=True)) + stop.flush()
            if rest:
                yield rest
        usage = {"prompt_tokens": len(tokens), "completion_tokens": made, "total_tokens": len(tokens) + made}
        yield StreamEvent(finish_reason=finish, usage=usage)

    def sampling(self, params: GenerationParams) -> dict[str, Any]:
        """llama.cpp's sampling arguments for the call's params (llama.cpp's defaults for what is unset)."""
        value = {name: default if getattr(params, name) is None else getattr(params, name)
                 for name, default in DEFAULTS.items()}
        out = {"temp": 0.0 if params.greedy else value["temperature"], "top_p": value["top_p"],
               "top_k": value["top_k"], "min_p": MIN_P, "repeat_penalty": params.repetition_penalty or 1.0,
               "frequency_penalty": params.frequency_penalty or 0.0,
               "presence_penalty": params.presence_penalty or 0.0}
        bias = (params.extra or {}).get("logit_bias")
        if bias:
            out["logits_processor"] = [self._bias(bias)]
        return out

    def _bias(self, bias: Any) -> Callable[[Any, Any], Any]:
        """OpenAI's logit_bias ({token id: -100..100}) as a logits processor."""
        vocab = self._parts()[0].n_vocab()
        try:
            pairs = {int(k): float(v) for k, v in dict(bias).items()}
        except (TypeError, ValueError):
            pairs = None
        if pairs is None or not all(0 <= k < vocab and -100 <= v <= 100 for k, v in pairs.items()):
            raise InvalidRequestError(f"logit_bias must map token ids (0 to {vocab - 1}) to numbers from "
                                      "-100 to 100", param="logit_bias")
        ids, add = list(pairs), list(pairs.values())

        def apply(input_ids: Any, scores: Any) -> Any:
            scores[ids] += add
            return scores
        return apply

    def _checkout(self, tokens: list[int], cancel: CancelToken) -> tuple[Any, int]:
        """A free Llama (the one whose cache shares the longest start with `tokens`), or a new one while
        fewer than `slots` exist; waiting gives up when cancelled."""
        with self._cond:
            while True:
                if self._idle:
                    llm = max(self._idle, key=lambda candidate: _shared(candidate, tokens))
                    self._idle.remove(llm)
                    return llm, self._epoch
                if self._made < self.slots:
                    self._made += 1
                    epoch = self._epoch
                    break
                if cancel.cancelled:
                    raise CancelledError("generation cancelled while waiting for a free slot")
                self._cond.wait(0.05)
        try:
            with self._load_lock:
                return self._open(), epoch
        except BaseException:
            self._checkin(None, epoch)
            raise

    def _checkin(self, llm: Any, epoch: int) -> None:
        """Give a Llama back (None: making one failed)."""
        with self._cond:
            if epoch != self._epoch:
                return      # closed meanwhile: dropped (freed when the last reference goes)
            if llm is not None:
                self._idle.append(llm)
            else:
                self._made -= 1
            self._cond.notify()


def _shared(llm: Any, tokens: list[int]) -> int:
    """How many tokens at the start of `tokens` are in `llm`'s KV cache already."""
    cached = llm.input_ids[:llm.n_tokens]
    n = min(len(cached), len(tokens))
    same = cached[:n] == tokens[:n]
    return n if same.all() else int(same.argmin())


def _import(name: str) -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise NotReadyError(f"{name} needs {PACKAGE}, which is not installed ({BUILD_NOTE})",
                            fix=f"pip install {PACKAGE}") from e
    return llama_cpp
