"""The CPU comparison behind `python bench/local_bench.py --cpu`: one random-weight model with the real shapes
of Qwen2.5-0.5B-Instruct, in both formats from the same tensors, run through the Router three ways.

Building (cached under --out, default bench_out/): a transformers Qwen2ForCausalLM (hidden 896, 24 layers,
14 heads / 2 KV heads, intermediate 4864, tied embeddings, rope theta 1e6, vocab 151,936, q/k/v biases,
random init, fp32) saved as an HF folder; the same tensors written as an f16 GGUF of llama.cpp's "qwen2"
architecture (tests/tiny_gguf.gguf_from_tensors), quantized to Q4_K_M by llama.cpp's own quantizer
(llama_model_quantize). Both sides share one byte-level BPE vocabulary padded to 151,936 with filler tokens
(tests/tiny_gguf.padded_vocabulary): the HF tokenizer is built from the same tokens and merges, so a prompt
reads as the same ids in both.

The replies are made comparable: every engine generates exactly `max_new_tokens` tokens, each a
one-character sentence ("好。"), so the first sentence is the first token and the token bound, not chance,
ends every reply. Random weights pick any of 151,936 tokens (mostly fillers, which print nothing) and
never stop; here the embedding rows of SENTENCE_CHARS' "X。" tokens are scaled by ALLOWED_SCALE (tied, so
their logits grow too), which makes greedy decoding choose one of them at every step in all three engines.
The cost of a step does not depend on the values, only on the shapes. The speech budget is MAX_SECONDS (10 s,
the request's max_seconds) instead of the default 5 s, which would cut 48 such sentences at 25; the rest of
the style (the rule in the prompt, cleaning, sentence release) is the default. All three use style_mode
"prefix" (the local kinds' default), so every engine reads the same prompt. The server runs with
--interrupt_requests False (its default cuts a reply off when the next request comes) and the same thread
count as the in-process engine; it applies its own default repeat_penalty 1.1 (content only, not speed).

    python bench/cpu_models.py run ENGINE ...   # one engine's runs in a process of its own (internal)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tiny_gguf import CHATML, SPECIALS, byte_level, gguf_from_tensors, padded_vocabulary  # noqa: E402

RECIPE = 1      # bump when what `build` writes changes: a cached model of another recipe is rebuilt
QWEN25_05B = dict(hidden=896, layers=24, heads=14, kv_heads=2, ff=4864, vocab=151936, context=32768,
                  rope_theta=1e6, eps=1e-6)
TINY = dict(QWEN25_05B, hidden=64, layers=2, heads=4, kv_heads=2, ff=128, vocab=8192)
PROMPTS = [
    "你好，请介绍一下你自己。", "我最近压力很大，怎么办？", "今天天气怎么样？", "推荐一本好书吧。",
    "深圳有什么好玩的地方？", "人工智能是什么？",
    "Hello, who are you?", "How can I handle stress at work?", "What is the weather like today?",
    "Can you recommend a good book?", "What is artificial intelligence?", "Tell me a fun fact about space.",
]
# Words that get tokens of their own, as Qwen's vocabulary has them (Chinese: about 1.5 characters a token)
ZH_WORDS = ("你好 介绍 一下 自己 最近 压力 很大 怎么办 怎么 怎么样 今天 天气 推荐 一本 好书 "
            "深圳 什么 好玩 地方 人工智能 是什么 回答 以下 问题 少于 请用").split()
SENTENCE_CHARS = ("好是的我你他她它们这那有在不了人们会能要说对也就都和很还想看来去到做吧呢啊哦嗯"
                  "行可以知道觉得因为所以但是如果已经现在时候今天明天大家一起学习工作生活快乐开心")
ALLOWED_SCALE = 6.0     # those rows' scale over the rest: their logits win greedy decoding at every step
MAX_SECONDS = 10.0      # the speech budget: 48 one-character sentences (9.6 s of speech) fit in it
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GB = 1024 ** 3


def sentence_tokens() -> list[str]:
    return [f"{ch}。" for ch in dict.fromkeys(SENTENCE_CHARS)]


def vocab_words() -> list[str]:
    """The words the shared vocabulary spells as tokens: the prompts' and the speech rule's characters and
    words (English words with and without their leading space), the chat template's."""
    from llm import speech

    texts = PROMPTS + [speech.Budget(MAX_SECONDS).instruction(p) for p in ("你好", "hello")]
    texts += ["system user assistant"]
    words: list[str] = []
    for text in texts:
        for match in re.finditer(r"[A-Za-z]+|[^\sA-Za-z0-9]", text):
            word = match.group()
            words += [word, " " + word] if word.isalpha() else [word]
    return words + ZH_WORDS


# ---- building -------------------------------------------------------------------------------------------

def hf_tokenizer(tokens: list[str], merges: list[str]) -> Any:
    """A transformers fast tokenizer over exactly these tokens and merges, split as Qwen2 splits text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                               merges=[tuple(m.split(" ")) for m in merges]))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def model_dir(out: Path, tiny: bool) -> Path:
    return out / ("qwen2-tiny-random" if tiny else "qwen2.5-0.5b-random")


def build(out: Path, tiny: bool = False, seed: int = 0, log=print) -> dict[str, Any]:
    """The HF folder, f16 GGUF and Q4_K_M GGUF under `out` (reused when already built with this recipe);
    returns the manifest: paths, build times, export checks."""
    shapes = TINY if tiny else QWEN25_05B
    root = model_dir(out, tiny)
    manifest_path = root / "manifest.json"
    want = {"recipe": RECIPE, "shapes": shapes, "seed": seed}
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in want} == json.loads(json.dumps(want)) and all(
                (root / manifest[k]).exists() for k in ("hf", "f16", "q4_k_m")):
            manifest["cached"] = True
            return manifest
    root.mkdir(parents=True, exist_ok=True)
    import numpy as np
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    times: dict[str, float] = {}
    t = time.perf_counter()
    words, extra = vocab_words(), sentence_tokens()
    tokens, merges, _ = padded_vocabulary(shapes["vocab"], words, extra)
    tok = hf_tokenizer(tokens, merges)
    ids = {s: tokens.index(s) for s in SPECIALS}
    config = Qwen2Config(hidden_size=shapes["hidden"], intermediate_size=shapes["ff"],
                         num_hidden_layers=shapes["layers"], num_attention_heads=shapes["heads"],
                         num_key_value_heads=shapes["kv_heads"], vocab_size=shapes["vocab"],
                         max_position_embeddings=shapes["context"], rms_norm_eps=shapes["eps"],
                         rope_parameters={"rope_type": "default", "rope_theta": shapes["rope_theta"]},
                         tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    allowed = [tokens.index(byte_level(s)) for s in extra]
    with torch.no_grad():
        model.model.embed_tokens.weight[allowed] *= ALLOWED_SCALE
        for layer in model.model.layers:      # real biases, so the export is checked with them
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.02)
    times["random init (torch, fp32)"] = time.perf_counter() - t
    t = time.perf_counter()
    hf = root / "hf"
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    times["save HF folder (safetensors fp32)"] = time.perf_counter() - t

    t = time.perf_counter()
    state = model.state_dict()

    def half(name: str) -> Any:
        return state[name].detach().to(torch.float16).numpy()

    def full(name: str) -> Any:
        return state[name].detach().float().numpy().astype(np.float32)

    tensors = {"token_embd.weight": half("model.embed_tokens.weight")}
    for i in range(shapes["layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        tensors[b + "attn_norm.weight"] = full(p + "input_layernorm.weight")
        for x in "qkv":
            tensors[b + f"attn_{x}.weight"] = half(p + f"self_attn.{x}_proj.weight")
            tensors[b + f"attn_{x}.bias"] = full(p + f"self_attn.{x}_proj.bias")
        tensors[b + "attn_output.weight"] = half(p + "self_attn.o_proj.weight")
        tensors[b + "ffn_norm.weight"] = full(p + "post_attention_layernorm.weight")
        for hf_name, name in (("gate_proj", "ffn_gate"), ("up_proj", "ffn_up"), ("down_proj", "ffn_down")):
            tensors[b + f"{name}.weight"] = half(p + f"mlp.{hf_name}.weight")
    tensors["output_norm.weight"] = full("model.norm.weight")
    f16 = root / "model-f16.gguf"
    gguf_from_tensors(f16, tensors, arch="qwen2", heads=shapes["heads"], kv_heads=shapes["kv_heads"],
                      context=shapes["context"], rope_theta=shapes["rope_theta"], eps=shapes["eps"],
                      words=words, extra_tokens=extra)
    del tensors
    times["write f16 GGUF (numpy)"] = time.perf_counter() - t

    t = time.perf_counter()
    q4 = root / "model-q4_k_m.gguf"
    quantize(f16, q4, root / "quantize.log")
    times["quantize to Q4_K_M (llama_model_quantize)"] = time.perf_counter() - t

    t = time.perf_counter()
    checks = export_checks(model, tok, f16, q4, tiny)
    times["export checks"] = time.perf_counter() - t
    del model
    manifest = {**want, "hf": "hf", "f16": f16.name, "q4_k_m": q4.name, "times": times, "checks": checks,
                "sizes": {k: _size(root / v) for k, v in (("hf", "hf"), ("f16", f16.name),
                                                           ("q4_k_m", q4.name))},
                "allowed_tokens": len(allowed), "torch": torch.__version__}
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    manifest["cached"] = False
    return manifest


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


@contextlib.contextmanager
def c_output_to(path: Path):
    """Send this process's file descriptors 1 and 2 (llama.cpp's C logs) to `path` meanwhile."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize(src: Path, dst: Path, log_path: Path) -> None:
    """llama.cpp's quantizer (the llama-quantize tool's library call) from f16 to Q4_K_M."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    with c_output_to(log_path):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}); see {log_path}")


def export_checks(model: Any, tok: Any, f16: Path, q4: Path, tiny: bool) -> dict[str, Any]:
    """Whether the GGUFs are the HF model: the prompts' ids in both tokenizers, and the next-token logits
    of two prompts (fp32 transformers vs llama.cpp on the f16 and Q4_K_M files)."""
    import llama_cpp
    import numpy as np
    import torch

    texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                     add_generation_prompt=True) for p in PROMPTS]
    hf_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    out: dict[str, Any] = {"hf_prompt_tokens": [len(i) for i in hf_ids]}
    for label, path in (("f16", f16), ("q4_k_m", q4)):
        with c_output_to(f16.parent / "checks.log"):
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True,
                                  verbose=False)
        cpp_ids = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
        if label == "f16":
            out["same_prompt_ids"] = sum(a == b for a, b in zip(hf_ids, cpp_ids, strict=True))
            out["gguf_prompt_tokens"] = [len(i) for i in cpp_ids]
        agree, errors = 0, []
        for ids in hf_ids[:1] + hf_ids[6:7]:        # one Chinese, one English prompt
            with torch.no_grad():
                ref = model(torch.tensor([ids])).logits[0, -1].float().numpy()
            llm.reset()
            llm.eval(ids)
            got = np.array(llm.scores[len(ids) - 1])
            agree += int(ref.argmax() == got.argmax())
            errors.append(float(np.abs(ref - got).max() / ref.std()))
        out[label] = {"top1_agree": f"{agree}/2", "max_abs_logit_error_in_std": round(max(errors), 3)}
        del llm
    return out


# ---- one engine's runs (a child process, so its peak RSS is its own) ------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p90 of 12 values: the 11th)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def run_engine(args: argparse.Namespace) -> dict[str, Any]:
    from configs import ProviderConfig, Settings
    from llm import speech
    from llm.router import Router
    from llm.types import GenerationParams

    root = Path(args.dir)
    manifest = json.loads((root / "manifest.json").read_text())
    off = dict(retries=0, first_token_timeout=0, stall_timeout=0, style_mode="prefix")
    if args.engine == "local":
        cfg = ProviderConfig("transformers-fp32", "local", str(root / manifest["hf"]), device="cpu",
                             dtype="float32", **off)
    elif args.engine == "gguf":
        cfg = ProviderConfig("gguf-q4km", "gguf", str(root / manifest["q4_k_m"]), context_window=4096,
                             max_concurrency=args.slots, **off)
    else:
        cfg = ProviderConfig("llamacpp-server", "openai", "qwen2.5-0.5b-random", base_url=args.base_url,
                             timeout=900, **off)
    router = Router(Settings(default=cfg.name, providers={cfg.name: cfg}))
    provider = router.provider(cfg.name)
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=0)
    result: dict[str, Any] = {"engine": args.engine, "slots": args.slots, "runs": {}}
    t = time.perf_counter()
    if hasattr(provider, "load"):
        provider.load()
    result["load_s"] = time.perf_counter() - t

    def one(prompt: str, max_new_tokens: int | None = None) -> dict[str, Any]:
        start, first, parts, usage, finish = time.perf_counter(), None, [], None, None
        splitter = speech.SentenceSplitter()
        call = params if max_new_tokens is None else GenerationParams(max_new_tokens=max_new_tokens,
                                                                      temperature=0)
        for chunk in router.stream(prompt, provider=cfg.name, params=call, max_seconds=MAX_SECONDS,
                                   hold="sentence"):
            if chunk.text:
                parts.append(chunk.text)
                if first is None and splitter.feed(chunk.text):
                    first = time.perf_counter()
            usage, finish = chunk.usage or usage, chunk.finish_reason or finish
        end = time.perf_counter()
        text = "".join(parts)
        return {"first": (first or end) - start, "end": end - start, "sentences": text.count("。"),
                "usage": dict(usage or {}), "finish": finish, "text": text[:40]}

    t = time.perf_counter()     # warm-up, off the clock: as many at once as the most measured, on prompts
    n = max(args.concurrency)   # of their own (a llama.cpp slot keeps its last prompt's cache)
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda p: one(p, 4), [f"Warm-up {i}: say something." for i in range(n)]))
    result["warm_up_s"] = time.perf_counter() - t
    for n in args.concurrency:
        t = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            replies = list(pool.map(one, PROMPTS))
        result["runs"][str(n)] = {"wall": time.perf_counter() - t, "replies": replies}
    result["pss"] = pss(os.getpid())     # before the Llamas go: each slot maps the file again
    router.close()
    # VmHWM, not ru_maxrss: that one keeps the parent's peak across fork and exec
    result["peak_rss"] = vm_hwm(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description="one engine's runs, for bench/local_bench.py --cpu")
    p.add_argument("engine", choices=["local", "gguf", "openai"])
    p.add_argument("--dir", required=True)
    p.add_argument("--slots", type=int, default=1)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1])
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--base-url")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    import logging
    logging.basicConfig(level=logging.WARNING)
    Path(args.json).write_text(json.dumps(run_engine(args), ensure_ascii=False))


# ---- the whole comparison (the parent) ------------------------------------------------------------------

class LoadWatch:
    """The 1-minute load average, sampled every few seconds while the benchmark runs."""

    def __init__(self, every: float = 5.0):
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        s = self.samples
        return f"1-min load average min {min(s):.2f} / mean {statistics.mean(s):.2f} / max {max(s):.2f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child(engine: str, root: Path, out: Path, concurrency: list[int], max_new_tokens: int, slots: int = 1,
          base_url: str | None = None) -> dict[str, Any]:
    tag = f"{engine}-{slots}"
    result = out / f"result-{tag}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "run", engine, "--dir", str(root), "--slots",
           str(slots), "--max-new-tokens", str(max_new_tokens), "--json", str(result), "--concurrency",
           *map(str, concurrency)] + (["--base-url", base_url] if base_url else [])
    with open(out / f"child-{tag}.log", "wb") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        tail = (out / f"child-{tag}.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the {tag} run failed ({rc}):\n{tail}")
    return json.loads(result.read_text())


def pss(pid: int) -> int | None:
    """A process's proportional set size now, bytes: pages it shares (a file several slots map, or other
    processes too) counted once in all, unlike RSS, which counts a mapped file again for each mapping."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return None


def vm_hwm(pid: int) -> int | None:
    """A process's peak resident set size (VmHWM), bytes."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def server_run(python: str, root: Path, out: Path, concurrency: list[int], max_new_tokens: int,
               threads: int) -> dict[str, Any]:
    """llama-cpp-python's server on the Q4_K_M file (its own process), driven by the openai kind."""
    manifest = json.loads((root / "manifest.json").read_text())
    port = free_port()
    cmd = [python, "-m", "llama_cpp.server", "--model", str(root / manifest["q4_k_m"]), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096", "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--interrupt_requests", "False"]    # queue, not cut off
    log = open(out / "server.log", "wb")    # a file, never an unread pipe: the server stalls on a full one
    t = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited ({server.returncode}); "
                                   f"see {out / 'server.log'}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.perf_counter() - t > 300:
                raise RuntimeError("the llama.cpp server did not come up in 300 s")
            time.sleep(0.2)
        load_s = time.perf_counter() - t
        result = child("openai", root, out, concurrency, max_new_tokens, base_url=base + "/v1")
        result["load_s"] = load_s
        result["peak_rss"], result["pss"] = vm_hwm(server.pid), pss(server.pid)
        result["server_cmd"] = " ".join(cmd)
        return result
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def summary(replies: list[dict[str, Any]], wall: float) -> dict[str, float]:
    firsts, ends = [r["first"] for r in replies], [r["end"] for r in replies]
    tokens = [r["sentences"] for r in replies]
    return {"first_med": statistics.median(firsts), "first_p90": percentile(firsts, 0.9),
            "end_med": statistics.median(ends), "end_p90": percentile(ends, 0.9),
            "tok_min": min(tokens), "tok_max": max(tokens),
            "stream_tok_s": statistics.median((t - 1) / max(r["end"] - r["first"], 1e-9)
                                              for t, r in zip(tokens, replies, strict=True)),
            "total_tok_s": sum(tokens) / wall}


def cpu_bench(out: Path, tiny: bool, llama_python: str | None, max_new_tokens: int,
              concurrency: list[int]) -> None:
    """Build (or reuse) the models, run the three engines, print the table and the issue's ratios."""
    out = Path(out).resolve()
    root = model_dir(out, tiny)
    watch = LoadWatch()
    cores = os.cpu_count()
    print(f"CPU bench: {'tiny Qwen2 shapes' if tiny else 'Qwen2.5-0.5B-Instruct shapes'}, random weights, "
          f"{cores} CPUs, load average now {os.getloadavg()[0]:.2f}; models in {root}")
    t = time.perf_counter()
    manifest = build(out, tiny)
    if manifest["cached"]:
        print(f"models: reused from {root} (built earlier; delete the folder to rebuild)")
    else:
        print(f"models: built in {time.perf_counter() - t:.1f} s")
    for step, seconds in manifest["times"].items():
        print(f"  {step:<44} {seconds:7.1f} s{'  (when built)' if manifest['cached'] else ''}")
    sizes = manifest["sizes"]
    print(f"  sizes: HF fp32 {sizes['hf'] / GB:.2f} GiB, f16 GGUF {sizes['f16'] / GB:.2f} GiB, "
          f"Q4_K_M GGUF {sizes['q4_k_m'] / GB:.2f} GiB")
    checks = manifest["checks"]
    print(f"  export checks: prompt ids identical in both tokenizers for {checks['same_prompt_ids']}/"
          f"{len(PROMPTS)} chat prompts ({min(checks['hf_prompt_tokens'])}-{max(checks['hf_prompt_tokens'])} "
          f"tokens); next-token logits vs transformers fp32: f16 GGUF top-1 {checks['f16']['top1_agree']}, "
          f"max error {checks['f16']['max_abs_logit_error_in_std']} std; Q4_K_M top-1 "
          f"{checks['q4_k_m']['top1_agree']}, max error {checks['q4_k_m']['max_abs_logit_error_in_std']} std")

    many = [n for n in concurrency if n > 1]
    rows: list[tuple[str, int, dict[str, Any], dict[str, float]]] = []
    loads: list[str] = []

    def add(label: str, result: dict[str, Any]) -> None:
        loads.append(f"  {label}: load {result['load_s']:.1f} s, warm-up {result['warm_up_s']:.1f} s")
        for n, run in result["runs"].items():
            rows.append((label, int(n), result, summary(run["replies"], run["wall"])))

    print("running: gguf (in-process, Q4_K_M) ...", flush=True)
    if 1 in concurrency:
        add("gguf Q4_K_M, 1 slot", child("gguf", root, out, [1], max_new_tokens, slots=1))
    if many:
        add(f"gguf Q4_K_M, {max(many)} slots",
            child("gguf", root, out, many, max_new_tokens, slots=max(many)))
    if llama_python:
        print("running: llama.cpp server (llama-cpp-python) behind kind openai ...", flush=True)
        add("llama.cpp server", server_run(llama_python, root, out, concurrency, max_new_tokens, cores or 1))
    print("running: transformers fp32 (kind local) ...", flush=True)
    add("transformers fp32", child("local", root, out, concurrency, max_new_tokens))
    load = watch.stop()

    print(f"\n{len(PROMPTS)} prompts (6 Chinese, 6 English) through Router.stream with the speech style "
          f"(budget {MAX_SECONDS:g} s), greedy, {max_new_tokens} tokens a reply; times in seconds")
    head = (f"{'engine':<22} {'conc':>4} {'1st sentence med':>16} {'p90':>6} {'end med':>8} {'p90':>6} "
            f"{'tok/reply':>9} {'tok/s/stream':>12} {'tok/s total':>11} {'peak RSS':>9} {'PSS':>6}")
    print(head)
    print("-" * len(head))
    for label, n, result, s in rows:
        toks = f"{s['tok_min']}" if s["tok_min"] == s["tok_max"] else f"{s['tok_min']}-{s['tok_max']}"
        print(f"{label:<22} {n:>4} {s['first_med']:>16.2f} {s['first_p90']:>6.2f} {s['end_med']:>8.2f} "
              f"{s['end_p90']:>6.2f} {toks:>9} {s['stream_tok_s']:>12.1f} {s['total_tok_s']:>11.1f} "
              f"{result['peak_rss'] / GB:>8.2f}G {(result.get('pss') or 0) / GB:>5.2f}G")
    print("memory, GiB: the engine's own process (a child of this one) for in-process engines, the server's "
          "process for llama.cpp; peak RSS counts the mapped GGUF once per llama.cpp context (slot), PSS at "
          "the end of the runs counts it once")
    print("load (gguf: first context + one token; server: start until it answers; transformers: "
          "from_pretrained + warm-up) and warm-up (one short reply per concurrent request, off the clock):")
    print("\n".join(loads))
    gguf = next((result for label, _, result, _ in rows if label.startswith("gguf")), None)
    if gguf:    # the same rendered prompt in every engine: llama.cpp's count (transformers': the same ids)
        counted = [r["usage"].get("prompt_tokens", 0) for r in next(iter(gguf["runs"].values()))["replies"]]
        zh, en = counted[:len(counted) // 2], counted[len(counted) // 2:]
        print(f"prompt tokens a request (llama.cpp's count; the same ids in transformers): Chinese "
              f"{min(zh)}-{max(zh)}, English {min(en)}-{max(en)}")

    def row(prefix: str, n: int) -> dict[str, float] | None:
        return next((s for label, m, _, s in rows if label.startswith(prefix) and m == n), None)

    print("\ngoals (issue 22), on median time to the end of a reply (first sentence in brackets):")
    gguf1, cpp1, hf1 = row("gguf", 1), row("llama.cpp", 1), row("transformers", 1)
    if gguf1 and cpp1:
        r, f = gguf1["end_med"] / cpp1["end_med"], gguf1["first_med"] / cpp1["first_med"]
        print(f"  in-process gguf / llama.cpp server, 1 at a time: {r:.2f}x [{f:.2f}x]  "
              f"(goal <= 1.2x: {'met' if r <= 1.2 else 'MISSED'})")
    else:
        print("  in-process gguf / llama.cpp server: skipped (no --llama-python: the server's Python, with "
              "llama-cpp-python[server])")
    if gguf1 and hf1:
        r, f = hf1["end_med"] / gguf1["end_med"], hf1["first_med"] / gguf1["first_med"]
        print(f"  transformers fp32 / in-process gguf, 1 at a time: {r:.2f}x [{f:.2f}x]  "
              f"(goal >= 3x faster: {'met' if r >= 3 else 'MISSED'})")
    top = max(concurrency)
    for prefix in ("gguf", "llama.cpp", "transformers"):
        one, more = row(prefix, 1), row(prefix, top)
        if one and more and top > 1:
            r = more["end_med"] / one["end_med"]
            goal = (f"  (goal <= 2.5x: {'met' if r <= 2.5 else 'MISSED'})" if prefix == "gguf"
                    else "  (for reference)")
            f = more["first_med"] / one["first_med"]
            print(f"  {prefix}: {top} at once / 1 at a time: {r:.2f}x [{f:.2f}x]{goal}")
    print(f"machine: {cores} CPUs; {load} during the run")


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        child_main(sys.argv[2:])
    else:
        sys.exit("usage: python bench/local_bench.py --cpu (this module's `run` is its child process)")
