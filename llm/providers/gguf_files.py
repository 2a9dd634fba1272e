"""A GGUF file without llama.cpp: its header (complete? its context length, its KV cache's size per token),
where a provider's file is (a path, or a hub repo's file in the local HF cache), and the machine it runs
on (physical cores, RAM). Read by `GGUFProvider.status()`, which must never import llama_cpp."""

from __future__ import annotations

import contextlib
import fnmatch
import math
import mmap
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

KV_BYTES = 2                # per cached K or V value (llama.cpp's f16 cache)
_REPO_ID = re.compile(r"^[\w-][\w.-]*(/[\w-][\w.-]*)?$")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


# ---- the file: its header, read without llama.cpp ----------------------------------------------------------

class BadGGUF(Exception):
    """A file llama.cpp cannot load: not GGUF, an unknown version, or cut short."""


@dataclass(frozen=True)
class Header:
    """What readiness and sizing need from a GGUF file's header."""

    version: int
    arch: str
    values: dict[str, Any]      # metadata: scalars and strings (arrays only when short and numeric)
    size: int                   # bytes on disk
    needed: int                 # bytes the header says the file has (its last tensor's end)

    def get(self, key: str, default: Any = None) -> Any:
        """An architecture key (`context_length`, `block_count`...) or a full one (`general.alignment`)."""
        return self.values.get(f"{self.arch}.{key}", self.values.get(key, default))

    @property
    def context_length(self) -> int | None:
        value = self.get("context_length")
        return int(value) if isinstance(value, int) and value > 0 else None

    def kv_bytes_per_token(self) -> int:
        """The KV cache's bytes per token of context (0 when the header does not say)."""
        layers, heads = self.get("block_count"), self.get("attention.head_count")
        kv_heads, width = self.get("attention.head_count_kv", heads), self.get("embedding_length")
        if isinstance(kv_heads, list):      # per layer (some architectures)
            kv_heads = max(kv_heads, default=0)
        if not all(isinstance(v, int) and v > 0 for v in (layers, heads, kv_heads, width)):
            return 0
        key = self.get("attention.key_length", width // heads)
        value = self.get("attention.value_length", key)
        return layers * kv_heads * (key + value) * KV_BYTES


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_STRUCTS = {t: struct.Struct(f) for t, f in _SCALARS.items()}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
# ggml tensor types: (elements per block, bytes per block), as gguf-py's GGML_QUANT_SIZES
_BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
           10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
           16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
           22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
           29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
           41: (128, 18)}


class _Short(Exception):
    """The header runs past the end of the file."""


class _Reader:
    def __init__(self, buf: Any):
        self.buf, self.pos, self.end = buf, 0, len(buf)

    def unpack(self, s: struct.Struct) -> Any:
        if self.pos + s.size > self.end:
            raise _Short
        value = s.unpack_from(self.buf, self.pos)[0]
        self.pos += s.size
        return value

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.end:
            raise _Short
        self.pos += n

    def string(self, keep: bool = True) -> str | None:
        n = self.unpack(_U64)
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start:self.pos]).decode("utf-8", "replace") if keep else None

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _STRUCTS:
            return self.unpack(_STRUCTS[vtype])
        if vtype == _STRING:
            return self.string(keep)
        if vtype != _ARRAY:
            raise BadGGUF(f"an unknown metadata value type {vtype}")
        etype, count = self.unpack(_U32), self.unpack(_U64)
        if etype in _STRUCTS:
            if keep and count <= 1024:
                return [self.unpack(_STRUCTS[etype]) for _ in range(count)]
            self.skip(_STRUCTS[etype].size * count)
            return None
        for _ in range(count):      # strings (the vocabulary), or arrays of arrays
            self.value(etype, keep=False)
        return None


def read_header(path: Path) -> Header:
    """The header of the GGUF file at `path`; BadGGUF saying what is wrong with it."""
    size = path.stat().st_size
    if size < 24:
        raise BadGGUF("is not a GGUF file (too short)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise BadGGUF("is not a GGUF file (it does not start with GGUF)")
        r = _Reader(buf)
        r.pos = 4
        try:
            version = r.unpack(_U32)
            if version not in (2, 3):
                raise BadGGUF(f"has GGUF version {version}, which llama.cpp cannot read"
                              + (" (big-endian?)" if version > 0xFFFF else ""))
            n_tensors, n_kv = r.unpack(_U64), r.unpack(_U64)
            values: dict[str, Any] = {}
            for _ in range(n_kv):
                key = r.string()
                values[key] = r.value(r.unpack(_U32))
            end = 0
            for _ in range(n_tensors):
                r.string(keep=False)
                dims = [r.unpack(_U64) for _ in range(r.unpack(_U32))]
                ttype, offset = r.unpack(_U32), r.unpack(_U64)
                block, nbytes = _BLOCKS.get(ttype, (1, 0))      # an unknown type: its start at least
                end = max(end, offset + math.prod(dims) // block * nbytes)
        except _Short:
            raise BadGGUF(f"is cut short ({size} bytes end inside its header)") from None
        align = values.get("general.alignment", 32)
        align = align if isinstance(align, int) and align > 0 else 32
        start = r.pos + -r.pos % align
        arch = values.get("general.architecture")
        if not isinstance(arch, str):
            raise BadGGUF("has no general.architecture")
    return Header(version, arch, values, size, start + end)


_HEADERS: dict[tuple[str, int, int], Header | str] = {}
_HEADERS_LOCK = threading.Lock()


def inspect(path: Path) -> Header | str:
    """The file's header, or why llama.cpp cannot load it (a sentence about `path`); cached per version of
    the file (its size and mtime), as status() is asked often."""
    try:
        st = path.stat()
    except OSError as e:
        return f"{path} cannot be read: {e.strerror or e}"
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _HEADERS_LOCK:
        if key in _HEADERS:
            return _HEADERS[key]
    try:
        found: Header | str = read_header(path)
    except BadGGUF as e:
        found = f"{path} {e}"
    except (OSError, ValueError) as e:
        found = f"{path} cannot be read: {e}"
    if isinstance(found, Header) and found.size < found.needed:
        found = f"{path} is truncated: {found.size} of its {found.needed} bytes are there"
    with _HEADERS_LOCK:
        _HEADERS[key] = found
    return found


# ---- where the file is ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where a provider's .gguf comes from: a path, or a hub repo and a file name or glob in it."""

    path: Path | None = None
    repo: str | None = None
    pattern: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"{self.repo}:{self.pattern}"


def source(model: str, quantization: str | None = None) -> Source:
    """`model` read as a path, `repo_id:file-or-glob`, or a repo id (its file picked by `quantization`)."""
    path = Path(model).expanduser()
    if path.exists():
        return Source(path=path)
    repo, colon, pattern = model.partition(":")
    if colon and _REPO_ID.match(repo) and pattern and not pattern.startswith(("/", "\\")) and len(repo) > 1:
        return Source(repo=repo, pattern=pattern)
    if _REPO_ID.match(model) and "/" in model and not model.lower().endswith(".gguf"):
        return Source(repo=model, pattern=f"*{quantization}*.gguf" if quantization else "*.gguf")
    return Source(path=path)


def shards(path: Path) -> list[Path]:
    """A split model's files (`...-00001-of-00003.gguf`), from its first; [path] for a single file."""
    m = _SHARD.search(path.name)
    if not m:
        return [path]
    total, stem = int(m.group(2)), path.name[:m.start()]
    return [path.with_name(f"{stem}-{i:05d}-of-{total:05d}.gguf") for i in range(1, total + 1)]


def matching(names: Iterable[str], pattern: str) -> list[str]:
    """The repo files (paths in the repo) that `pattern`, a file name or glob, names: matched against the path
    or its last part, case-insensitively (hubs spell Q4_K_M and q4_k_m), with the other parts of a split
    model. `python -m llm download` can fetch what this picks from the repo's file list."""
    names, want = list(names), pattern.lower()
    found = {n for n in names if fnmatch.fnmatchcase(n.lower(), want)
             or fnmatch.fnmatchcase(n.rsplit("/", 1)[-1].lower(), want)}
    for name in list(found):
        if m := _SHARD.search(name):
            found.update(n for n in names if n[:m.start()] == name[:m.start()] and _SHARD.search(n)
                         and _SHARD.search(n).group(2) == m.group(2))
    return sorted(found)


def cached_files(repo: str, pattern: str, cache: str) -> list[Path]:
    """The files of `repo` in the HF cache (the snapshot `main` points to, else the newest) that `pattern`
    names (`matching`). Only the folders are read: no network."""
    folder = Path(cache) / f"models--{repo.replace('/', '--')}"
    try:
        main = (folder / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        main = ""
    try:
        snapshots = sorted((folder / "snapshots").iterdir(), reverse=True,
                           key=lambda p: (p.name == main, p.stat().st_mtime))
    except OSError:
        return []
    for snap in snapshots:
        names = [p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()]
        found = matching(names, pattern)
        if found:
            return [snap / name for name in found]
    return []


# ---- the machine ------------------------------------------------------------------------------------------

def physical_cores() -> int:
    """Cores this process may run on, counting a core's hyper-threads once (llama.cpp runs best with one
    thread per physical core), within a cgroup CPU quota."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:      # not Linux
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    with contextlib.suppress(OSError, ValueError):
        for block in Path("/proc/cpuinfo").read_text(encoding="utf-8").split("\n\n"):
            pairs = (line.partition(":") for line in block.splitlines())
            fields = {k.strip(): v.strip() for k, _, v in pairs}
            if "core id" in fields and int(fields.get("processor", -1)) in allowed:
                cores.add((fields.get("physical id"), fields["core id"]))
    count = len(cores) or len(allowed)
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="utf-8").split()[:2]
        if quota != "max":
            count = min(count, math.ceil(int(quota) / int(period)))
    return max(1, count)


def memory() -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM for this process (a cgroup limit counts), None where unknown."""
    info: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) * 1024
    total, available = info.get("MemTotal"), info.get("MemAvailable")
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text(encoding="utf-8").strip()
        if limit != "max":
            total = min(total or int(limit), int(limit))
            available = min(available or total, total)
    return total, available
