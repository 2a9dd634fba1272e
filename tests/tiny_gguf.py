"""Offline builder for small random-weight LLaMA GGUF files that llama.cpp loads and serves.

The tokenizer lives inside the file: a GPT-2 style byte-level BPE (`tokenizer.ggml.model = "gpt2"`) whose
vocabulary is the 256 byte tokens, a few merges of ASCII letter pairs, and the ChatML specials, so any text
(Chinese included) tokenizes. The weights are random, so generations are noise; `<|im_end|>` is the eos.

    python tests/tiny_gguf.py OUT.gguf                      # TINY: hidden 64, 2 layers, loads in milliseconds
    python tests/tiny_gguf.py OUT.gguf --bench              # BENCH: ~110M params f16, 2k-token prefill takes seconds

`gguf_from_tensors` writes given tensors (a real model's shapes and weights, "llama" or "qwen2") with a
vocabulary of any size from `padded_vocabulary` (bench/cpu_models.py: Qwen2.5-0.5B's 151,936).
"""

from __future__ import annotations

import argparse
import string
import struct
from pathlib import Path
from typing import Any, Iterable

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY = dict(vocab_size=512, hidden=64, layers=2, heads=4, kv_heads=2, ff=128, context=4096, f16=False)
BENCH = dict(vocab_size=512, hidden=1024, layers=8, heads=16, kv_heads=4, ff=2816, context=8192, f16=True)


def byte_tokens() -> list[str]:
    """GPT-2's `bytes_to_unicode`: one printable character per byte value, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def vocabulary(vocab_size: int) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types): bytes, then letter-pair merges to fill up, then the specials last."""
    tokens, merges = byte_tokens(), []
    pairs = ((a, b) for a in " " + string.ascii_letters for b in string.ascii_letters)
    space = tokens[ord(" ")]                            # "Ġ": spaces are mapped before merging
    while len(tokens) < vocab_size - len(SPECIALS):
        a, b = next(pairs)
        a = space if a == " " else a
        merges.append(f"{a} {b}")
        tokens.append(a + b)
    normal, control = 1, 3                              # gguf.TokenType.NORMAL / CONTROL
    types = [normal] * len(tokens) + [control] * len(SPECIALS)
    return tokens + SPECIALS, merges, types


# GGUF value types (gguf-py's GGUFValueType) and tensor types (GGMLQuantizationType) this writer uses
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9
_F32_TENSOR, _F16_TENSOR = 0, 1
ALIGNMENT = 32      # general.alignment's default: the data section and each tensor start on it


class GGUFFile:
    """A minimal GGUF v3 writer (the format llama.cpp reads): metadata key/values, then tensors. The same
    bytes as gguf-py's GGUFWriter for what it writes, without that package (numpy only)."""

    def __init__(self, arch: str):
        self.kv: list[bytes] = []
        self.tensors: list[tuple[str, Any]] = []
        self.add("general.architecture", _STR, arch)

    @staticmethod
    def _str(text: str) -> bytes:
        raw = text.encode("utf-8")
        return struct.pack("<Q", len(raw)) + raw

    @classmethod
    def _value(cls, vtype: int, value) -> bytes:
        if vtype == _STR:
            return cls._str(value)
        return struct.pack({_U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?"}[vtype], value)

    def add(self, key: str, vtype: int, value) -> None:
        self.kv.append(self._str(key) + struct.pack("<I", vtype) + self._value(vtype, value))

    def add_array(self, key: str, vtype: int, values: list) -> None:
        body = b"".join(self._value(vtype, v) for v in values)
        self.kv.append(self._str(key) + struct.pack("<IIQ", _ARR, vtype, len(values)) + body)

    def add_tensor(self, name: str, array) -> None:
        self.tensors.append((name, array))

    def write(self, path: Path) -> None:
        import numpy as np

        infos, data, offset = [], [], 0
        for name, array in self.tensors:
            kind = _F16_TENSOR if array.dtype == np.float16 else _F32_TENSOR
            dims = tuple(reversed(array.shape))     # GGUF lists the fastest-varying dimension first
            infos.append(self._str(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset))
            raw = np.ascontiguousarray(array).tobytes()
            raw += b"\0" * (-len(raw) % ALIGNMENT)
            data.append(raw)
            offset += len(raw)
        head = struct.pack("<4sIQQ", b"GGUF", 3, len(self.tensors), len(self.kv)) + b"".join(self.kv)
        head += b"".join(infos)
        head += b"\0" * (-len(head) % ALIGNMENT)
        with open(path, "wb") as f:
            f.write(head)
            for raw in data:
                f.write(raw)


def _add_hyperparameters(w: GGUFFile, arch: str, *, context: int, hidden: int, layers: int, ff: int,
                         heads: int, kv_heads: int, rope_theta: float, eps: float, vocab_size: int,
                         f16: bool) -> None:
    """The `arch.*` shape keys llama.cpp builds the graph from, and the file type."""
    for key, value in (("context_length", context), ("embedding_length", hidden), ("block_count", layers),
                       ("feed_forward_length", ff), ("attention.head_count", heads),
                       ("attention.head_count_kv", kv_heads), ("rope.dimension_count", hidden // heads)):
        w.add(f"{arch}.{key}", _U32, value)
    w.add(f"{arch}.rope.freq_base", _F32, float(rope_theta))
    w.add(f"{arch}.attention.layer_norm_rms_epsilon", _F32, float(eps))
    w.add(f"{arch}.vocab_size", _U32, vocab_size)
    w.add("general.file_type", _U32, 1 if f16 else 0)    # LlamaFileType MOSTLY_F16 / ALL_F32


def _add_tokenizer(w: GGUFFile, tokens: list[str], merges: list[str], types: list[int],
                   chat_template: str | None) -> None:
    """The byte-level BPE tokenizer (`vocabulary()` or `padded_vocabulary()`'s layout) and chat template."""
    w.add("tokenizer.ggml.model", _STR, "gpt2")
    w.add("tokenizer.ggml.pre", _STR, "qwen2")           # Qwen2's split regex: CJK runs, digits one by one
    w.add_array("tokenizer.ggml.tokens", _STR, tokens)
    w.add_array("tokenizer.ggml.token_type", _I32, types)
    w.add_array("tokenizer.ggml.merges", _STR, merges)
    w.add("tokenizer.ggml.bos_token_id", _U32, tokens.index("<|endoftext|>"))
    w.add("tokenizer.ggml.eos_token_id", _U32, tokens.index("<|im_end|>"))
    w.add("tokenizer.ggml.padding_token_id", _U32, tokens.index("<|endoftext|>"))
    w.add("tokenizer.ggml.add_bos_token", _BOOL, False)
    if chat_template:
        w.add("tokenizer.chat_template", _STR, chat_template)


def build_gguf(path: str | Path, *, vocab_size: int = 512, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, ff: int = 128, context: int = 4096, seed: int = 0, f16: bool = False,
               chat_template: str | None = CHATML) -> Path:
    """Write a random LLaMA GGUF (f32, or f16 matrices with `f16=True`) with its tokenizer; returns the path.

    `vocab_size` counts everything (259..3015: 256 bytes + merges + 3 specials); `heads` must divide `hidden`.
    Needs numpy only (not the gguf package).
    """
    import numpy as np

    if not 259 <= vocab_size <= 259 + 53 * 52 or hidden % heads or heads % kv_heads:
        raise ValueError("need 259 <= vocab_size <= 3015, hidden % heads == 0 and heads % kv_heads == 0")
    path, head_dim = Path(path), hidden // heads
    tokens, merges, types = vocabulary(vocab_size)
    rng = np.random.default_rng(seed)
    wtype = np.float16 if f16 else np.float32

    w = GGUFFile("llama")
    _add_hyperparameters(w, "llama", context=context, hidden=hidden, layers=layers, ff=ff, heads=heads,
                         kv_heads=kv_heads, rope_theta=10000.0, eps=1e-5, vocab_size=len(tokens), f16=f16)
    _add_tokenizer(w, tokens, merges, types, chat_template)

    def matrix(name: str, out_features: int, in_features: int) -> None:
        """A (out, in) matrix as PyTorch lays it out; GGUF stores the dims reversed."""
        scale = in_features ** -0.5
        w.add_tensor(name, (rng.standard_normal((out_features, in_features), np.float32) * scale).astype(wtype))

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(hidden, np.float32))   # norms stay f32, as llama.cpp expects

    matrix("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight")
        matrix(f"blk.{i}.attn_q.weight", hidden, hidden)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        matrix(f"blk.{i}.attn_output.weight", hidden, hidden)
        norm(f"blk.{i}.ffn_norm.weight")
        matrix(f"blk.{i}.ffn_gate.weight", ff, hidden)
        matrix(f"blk.{i}.ffn_up.weight", ff, hidden)
        matrix(f"blk.{i}.ffn_down.weight", hidden, ff)
    norm("output_norm.weight")
    matrix("output.weight", len(tokens), hidden)

    w.write(path)
    return path


def byte_level(text: str) -> str:
    """`text` as a byte-level BPE spells it: each UTF-8 byte as its `byte_tokens()` character."""
    table = byte_tokens()
    return "".join(table[b] for b in text.encode("utf-8"))


def padded_vocabulary(vocab_size: int, words: Iterable[str] = (),
                      extra: Iterable[str] = ()) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of exactly `vocab_size` entries, for vocabularies of a real model's
    size (Qwen2's 151,936): the 256 byte tokens; merge chains that spell each of `words` (each character
    from its bytes first, then the word from its characters, so text made of them tokenizes into few
    tokens; a leading space is part of a word, as the "qwen2" pre-tokenizer splits); `extra` tokens (plain
    text in the vocabulary that no merge reaches: what a model may generate, never what text reads as);
    unreachable filler tokens ("¤" and a number: bytes no text has) up to the size; the ChatML specials
    last. The same layout as `vocabulary()`, with room for any size."""
    tokens, merges = byte_tokens(), []
    known = set(tokens)

    def chain(units: list[str]) -> None:
        head = units[0]
        for unit in units[1:]:
            if head + unit not in known:
                merges.append(f"{head} {unit}")
                tokens.append(head + unit)
                known.add(head + unit)
            head += unit

    words = list(dict.fromkeys(w for w in words if w))
    for word in words:                          # characters first: their merges rank before words'
        for ch in word:
            chain(list(byte_level(ch)))
    for word in words:
        chain([byte_level(ch) for ch in word])
    for text in dict.fromkeys(byte_level(t) for t in extra):
        if text not in known:
            tokens.append(text)
            known.add(text)
    filler = iter(range(vocab_size))
    room = vocab_size - len(SPECIALS)
    if len(tokens) > room:
        raise ValueError(f"{len(tokens)} tokens and {len(SPECIALS)} specials do not fit in {vocab_size}")
    while len(tokens) < room:
        tokens.append(byte_tokens()[0xA4] + str(next(filler)))     # "¤N": a lone continuation byte
    normal, control = 1, 3
    return tokens + SPECIALS, merges, [normal] * len(tokens) + [control] * len(SPECIALS)


def gguf_from_tensors(path: str | Path, tensors: dict[str, Any], *, arch: str = "llama", heads: int,
                      kv_heads: int, context: int = 4096, rope_theta: float = 10000.0, eps: float = 1e-5,
                      words: Iterable[str] = (), extra_tokens: Iterable[str] = (),
                      chat_template: str | None = CHATML) -> Path:
    """Write `tensors` (GGUF names -> numpy arrays in PyTorch's (out, in) layout, f16 or f32 as given) as a
    GGUF of `arch` ("llama" or "qwen2"; no `output.weight` means tied embeddings) with the byte-level
    tokenizer of `padded_vocabulary(rows of token_embd.weight, words, extra_tokens)`; returns the path.

    hidden, layers and feed-forward size are read from the tensors. For "llama", q and k must already be
    in llama.cpp's rotary layout; "qwen2" uses the NeoX rotation, PyTorch's own, so Hugging Face weights
    go in as they are. Numpy only."""
    import numpy as np

    path = Path(path)
    vocab_size, hidden = tensors["token_embd.weight"].shape
    layers = sum(1 for name in tensors if name.endswith(".attn_norm.weight"))
    ff = tensors["blk.0.ffn_gate.weight"].shape[0]
    if hidden % heads or heads % kv_heads:
        raise ValueError("need hidden % heads == 0 and heads % kv_heads == 0")
    tokens, merges, types = padded_vocabulary(vocab_size, words, extra_tokens)
    w = GGUFFile(arch)
    f16 = any(array.dtype == np.float16 for array in tensors.values())
    _add_hyperparameters(w, arch, context=context, hidden=hidden, layers=layers, ff=ff, heads=heads,
                         kv_heads=kv_heads, rope_theta=rope_theta, eps=eps, vocab_size=len(tokens), f16=f16)
    _add_tokenizer(w, tokens, merges, types, chat_template)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write(path)
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: write OUT.gguf; TINY sizes by default, BENCH with --bench, any size overridable."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--bench", action="store_true", help="start from the BENCH sizes instead of TINY")
    for key in ("vocab_size", "hidden", "layers", "heads", "kv_heads", "ff", "context", "seed"):
        p.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    p.add_argument("--f16", action=argparse.BooleanOptionalAction, default=None)
    args = vars(p.parse_args(argv))
    sizes = dict(BENCH if args.pop("bench") else TINY)
    sizes.update({k: v for k, v in args.items() if v is not None and k != "out"})
    print(build_gguf(args["out"], **sizes))


if __name__ == "__main__":
    main()
