"""Which local models stay loaded: one copy of each, within the device's memory, least recently used out."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...errors import NotReadyError

log = logging.getLogger(__name__)
GB = 1024 ** 3
MARGIN = 1.2        # the KV cache and activations beside the weights
BYTES_PER_PARAM = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0, "8bit": 1.0, "4bit": 0.5}
Key = tuple[str, str, str, str]     # (folder, dtype, device, quantization)


def estimate_bytes(path: Path, dtype: str, quantization: str | None = None) -> int | None:
    """Memory the model at `path` needs loaded in `dtype` (or quantized), with MARGIN; None when unknown."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    stored = _stored_bytes(path)
    if not stored:
        return None
    if "quantization_config" in config:     # quantized already: loads at about its stored size
        return int(stored * MARGIN)
    stored_dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    params = stored / BYTES_PER_PARAM.get(stored_dtype, 4.0)
    per_param = BYTES_PER_PARAM[quantization] if quantization else BYTES_PER_PARAM.get(dtype, 4.0)
    return int(params * per_param * MARGIN)


def _stored_bytes(path: Path) -> int:
    for index in sorted(path.glob("*.safetensors.index.json")):
        try:
            total = json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
        except (OSError, ValueError):
            total = None
        if isinstance(total, int) and total > 0:
            return total
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files)     # a hub cache links to its blobs: stat follows


def cuda_free_bytes(device: str) -> int | None:
    """Free memory on a CUDA device; None for the CPU (no budget there: the OS pages)."""
    if not device.startswith("cuda"):
        return None
    import torch  # only here, while a model loads: this module stays light
    return int(torch.cuda.mem_get_info(torch.device(device))[0])


@dataclass
class Weights:
    """One loaded model: its tokenizer, module and special token ids, and who uses it."""

    key: Key
    tokenizer: Any
    model: Any
    special: dict[str, Any]
    size: int | None
    engine: Any = None                          # the batching engine (local.batch.Batcher), if it runs one
    users: set = field(default_factory=set)     # the providers holding it
    solo: threading.Lock = field(default_factory=threading.Lock)   # plain generate: one at a time
    busy: int = 0                               # generations running on it now
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """The process's loaded local models (GPU memory is per process, so there is one pool)."""

    def __init__(self, free_bytes: Callable[[str], int | None] = cuda_free_bytes,
                 unload: Callable[[Weights], None] | None = None):
        self.free_bytes = free_bytes
        self.unload_hook = unload or (lambda weights: None)     # frees the device's cache (local.engine)
        self._lock = threading.Lock()
        self._loading: dict[Key, threading.Lock] = {}
        self.loaded: dict[Key, Weights] = {}

    def load(self, user: Any, key: Key, size: int | None, loader: Callable[[], dict[str, Any]],
             name: str) -> Weights:
        """The weights for `key`, shared if loaded already, else loaded by `loader` after making room.
        `loader` returns tokenizer, model and special (ids), maybe an engine and the extra bytes it took."""
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:      # two first users of one model: the second waits, then shares
            with self._lock:
                weights = self.loaded.get(key)
                if weights is not None:
                    weights.users.add(user)
                    return weights
            self.make_room(key, size, name)
            loaded = loader()
            extra = loaded.pop("extra_bytes", 0)
            weights = Weights(key, size=size + extra if size is not None else None, users={user}, **loaded)
            with self._lock:
                self.loaded[key] = weights
            return weights

    def make_room(self, key: Key, size: int | None, name: str) -> None:
        device = key[2]
        free = self.free_bytes(device)
        if size is None or free is None or free >= size:
            return
        with self._lock:
            idle = sorted((w for w in self.loaded.values() if w.key[2] == device and not w.busy),
                          key=lambda w: w.last_used)
        reclaimable = sum(w.size or 0 for w in idle)
        if free + reclaimable < size:
            raise NotReadyError(
                f"{name} needs about {size / GB:.1f} GB on {device}, which has {free / GB:.1f} GB free"
                + (f" ({reclaimable / GB:.1f} GB more from idle models)" if reclaimable else ""),
                fix=f"set quantization: 4bit (or 8bit), or dtype: float16, for provider {name}; or use a "
                    "smaller model, another device (device: cuda:1), or stop what else uses the GPU")
        for weights in idle:
            if free >= size:
                break
            log.info("unloading %s (idle %.0f s) to make room for %s on %s", weights.key[0],
                     time.monotonic() - weights.last_used, name, device)
            self.unload(weights)
            free = self.free_bytes(device) or 0
        if free < size:     # the estimate was short, or something else holds the memory
            raise NotReadyError(f"{name} needs about {size / GB:.1f} GB on {device}; only {free / GB:.1f} GB "
                                "could be freed", fix="use quantization, a smaller model or another device")

    def unload(self, weights: Weights) -> None:
        """Drop a model from every provider that holds it (each loads it again on its next use)."""
        with self._lock:
            if weights.busy or self.loaded.get(weights.key) is not weights:
                return
            del self.loaded[weights.key]
            users, weights.users = list(weights.users), set()
        for user in users:
            user.dropped(weights)
        self.unload_hook(weights)

    def release(self, user: Any, weights: Weights) -> None:
        with self._lock:
            weights.users.discard(user)
            last = not weights.users and self.loaded.get(weights.key) is weights
        if last:
            self.unload(weights)

    def hold(self, weights: Weights) -> bool:
        """Start a generation on `weights` (kept loaded until `done`); False if unloaded since: load again."""
        with self._lock:
            if self.loaded.get(weights.key) is not weights:
                return False
            weights.busy += 1
            weights.last_used = time.monotonic()
            return True

    def done(self, weights: Weights) -> None:
        with self._lock:
            weights.busy -= 1
            weights.last_used = time.monotonic()
