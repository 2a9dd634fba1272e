"""The torch and transformers side of local models, imported only with the first load (it takes seconds)."""

from __future__ import annotations

import gc
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ...errors import NotReadyError, UpstreamError
from ...types import CancelToken

Progress = Callable[[float, str], None]
END = object()      # queued after the last token (an error is queued instead)


class Hooks(BaseStreamer, StoppingCriteria):
    """One generate call's streamer and stopping criterion: queues each new token id list for the consuming
    generator (generate's first put is the prompt); stops at the next token once cancelled or closed."""

    def __init__(self, cancel: CancelToken) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cancel, self.closed, self.prompt_seen = cancel, threading.Event(), False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.queue.put(value.reshape(-1).tolist())
        self.prompt_seen = True

    def end(self) -> None:
        """Nothing: the worker thread queues the end (or the error) itself."""

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs) -> torch.BoolTensor:
        stop = self.cancel.cancelled or self.closed.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def placement(cfg: Any, log: Any) -> tuple[str, torch.dtype]:
    device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu":
            log.warning("%s: no CUDA GPU found, running %s on the CPU: expect slow replies",
                        cfg.name, cfg.model)
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise NotReadyError(f"{cfg.name}: device {device} is set but CUDA is not available",
                            fix=f"set device: auto or cpu for provider {cfg.name} in configs.yaml")
    if cfg.dtype != "auto":
        return device, getattr(torch, cfg.dtype)
    if not device.startswith("cuda"):
        return device, torch.float32    # CPU half precision is slow or unsupported
    return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load(cfg: Any, path: Path, device: str, dtype: torch.dtype, report: Progress,
         fix: str) -> tuple[Any, Any]:
    trust, label = cfg.trust_remote_code, cfg.display_name
    try:
        report(0.1, f"{label}: loading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        report(0.3, f"{label}: loading the weights ({cfg.quantization or str(dtype).removeprefix('torch.')})")
        if cfg.quantization:    # bitsandbytes places the quantized weights itself; 4-bit: NF4 in `dtype`
            from transformers import BitsAndBytesConfig
            bits = (BitsAndBytesConfig(load_in_8bit=True) if cfg.quantization == "8bit"
                    else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                            bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True))
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust,
                                                         quantization_config=bits, device_map=device)
            return tokenizer, model.eval()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust)
        report(0.8, f"{label}: moving the model to {device}")
        if device.startswith("cuda"):
            # cuDNN attention builds a graph per new sequence length, cached per thread: decoding
            # ran ~3x slower (bench/local_bench.py); flash/mem-efficient need none. Process-wide.
            torch.backends.cuda.enable_cudnn_sdp(False)
        return tokenizer, model.to(device).eval()
    except torch.cuda.OutOfMemoryError as e:
        raise NotReadyError(f"not enough GPU memory to load {cfg.model}", fix="use a smaller model or set "
                            f"dtype/device for provider {cfg.name} in configs.yaml") from e
    except (OSError, ValueError, RuntimeError, ImportError, KeyError) as e:
        raise NotReadyError(f"could not load {cfg.model}: {e}", fix=fix) from e


def special_ids(tokenizer: Any, model: Any) -> dict[str, Any]:
    eos = model.generation_config.eos_token_id
    eos = eos if eos is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    return {"eos_token_id": eos, "pad_token_id": pad}


def tokens(model: Any, ids: list[int], kwargs: dict, cancel: CancelToken, name: str,
           seed: int | None = None) -> Iterator[list[int]]:
    """`model.generate` in a worker thread, its new token ids as they come. Closing this (or cancelling)
    stops generate at the next token and waits for the thread, so the GPU is free when it returns."""
    hooks, prompt = Hooks(cancel), inputs(ids, model.device)
    kwargs = kwargs | {"streamer": hooks, "stopping_criteria": StoppingCriteriaList([hooks])}
    if seed is not None:
        torch.manual_seed(seed)     # the process's sampling RNG: the caller holds Weights.solo

    def generate() -> None:
        try:
            with torch.inference_mode():
                model.generate(**prompt, **kwargs)
            hooks.queue.put(END)
        except BaseException as e:  # noqa: BLE001 - re-raised as a typed error by the consumer
            hooks.queue.put(e)

    worker = threading.Thread(target=generate, name=f"generate-{name}", daemon=True)
    worker.start()
    try:
        while (item := hooks.queue.get()) is not END:
            if isinstance(item, BaseException):
                raise generation_error(name, item) from item
            yield item
    finally:
        hooks.closed.set()
        worker.join()


def warm_up(model: Any, special: dict[str, Any]) -> None:
    """One short greedy generation at load, so the first user does not pay for CUDA's context and kernels."""
    token = special["pad_token_id"]
    with torch.inference_mode():
        model.generate(**inputs([token, token], model.device), max_new_tokens=2, do_sample=False, **special)


def generation_error(name: str, e: BaseException) -> UpstreamError:
    """A failed generation's typed error; out of GPU memory (the batching engine says so in text) is a 503."""
    if isinstance(e, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(e):
        return UpstreamError(f"{name} ran out of GPU memory while generating", status=503,
                             fix="lower max_new_tokens, shorten the history or use a smaller model")
    return UpstreamError(f"{name} failed while generating: {type(e).__name__}: {e}")


def inputs(ids: list[int], device: Any) -> dict[str, torch.Tensor]:
    batch = torch.tensor([ids], dtype=torch.long, device=device)
    return {"input_ids": batch, "attention_mask": torch.ones_like(batch)}


def allocated(device: str) -> int:
    return torch.cuda.memory_allocated(torch.device(device)) if device.startswith("cuda") else 0


def free(weights: Any) -> None:
    """The pool's unload: the memory is free for the next model now (cycles collected), not at a later GC."""
    if weights.engine is not None:
        weights.engine.close()
    weights.model = weights.tokenizer = weights.engine = None
    gc.collect()
    if weights.key[2].startswith("cuda"):
        torch.cuda.empty_cache()
