"""Local model speed, two benches.

GPU (the default): LocalProvider on a random-weight Qwen1.5-1.8B (real shapes, bf16, CUDA), both engines:
plain generate and continuous batching at 1, 4, 8 and 16 streams at once (TTFT, tokens/s per stream and in
total, the ratios the issue's goals name, peak GPU memory, load + warm-up time); plus the incremental
detokenizer vs. TextIteratorStreamer re-decoding a long Chinese line.

    python bench/local_bench.py            # GPU: the real Qwen1.5-1.8B architecture
    python bench/local_bench.py --tiny     # CPU smoke run, well under a minute

CPU (`--cpu`, issue 22): the same model, a random-weight Qwen2.5-0.5B-Instruct (hidden 896, 24 layers, 14
heads / 2 KV heads, intermediate 4864, tied embeddings, rope theta 1e6, vocab 151,936; fp32, built by
bench/cpu_models.py), three ways through the Router (router.stream with the speech style, as the seed
route streams): `kind: local` (transformers, fp32, one reply at a time on the CPU), `kind: gguf` (llama.cpp
in-process, the Q4_K_M file llama.cpp's own quantizer made from the same tensors; 1 slot alone, 4 slots for
the concurrent runs) and, with --llama-python, llama-cpp-python's own server on that file behind `kind:
openai`. 12 short prompts (6 Chinese, 6 English) at 1, 2 and 4 at once; greedy, exactly --max-new-tokens
tokens a reply in every engine (each a one-character sentence, see bench/cpu_models.py). Printed: median
and p90 time to the first sentence and to the end, tokens per reply, tokens/s per stream and in total,
memory (peak RSS, and PSS, which counts the GGUF that each llama.cpp slot maps only once; of each engine's
own child process, of the server's process for llama.cpp), load times, the build times
(first run only: the models are cached under --out, default bench_out/), the load average, and the goals:
in-process gguf within 1.2x of the llama.cpp server, >= 3x faster than transformers fp32, 4 at once within
2.5x of one alone. A benchmark, not a test: it exits 0 whether the goals are met or not.

    python bench/local_bench.py --cpu --llama-python /work/llamacpp/venv/bin/python
    python bench/local_bench.py --cpu --tiny     # the same on a 2-layer Qwen2 in seconds (a smoke run)

Offline: the models and byte-level BPE tokenizers are built locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from configs import ProviderConfig  # noqa: E402
from llm.providers.local import IncrementalDetokenizer, LocalProvider  # noqa: E402
from llm.types import CancelToken, GenerationParams, Message  # noqa: E402
from tests.tiny_models import build_tokenizer, corpus  # noqa: E402

QWEN_1_8B = dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=16, vocab_size=151936, max_position_embeddings=32768,
                 rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False)
TINY = dict(QWEN_1_8B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=4096)
PROMPT = "你好，请介绍一下你自己，并说说如何应对压力。" * 4


class NoEarlyStop(LocalProvider):
    """LocalProvider that never stops before max_new_tokens: random weights may pick EOS at any step."""

    def generate_kwargs(self, params, weights=None):
        return super().generate_kwargs(params, weights) | {"min_new_tokens": params.max_new_tokens}

    def batch_request(self, weights, params):
        request = super().batch_request(weights, params)
        return None if request is None else request | {"eos_token_id": -1}


def build(directory: Path, shapes: dict, device: str, dtype: torch.dtype) -> None:
    """Save a random model with Qwen2 shapes and a small offline BPE tokenizer (its ids < vocab_size)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = build_tokenizer(vocab_size=4000)
    config = Qwen2Config(**shapes, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):      # initialise on the GPU: seconds instead of a minute on the CPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():   # ids past the tokenizer's end get logit 0, so greedy picks real tokens
        model.lm_head.weight[len(tok):].zero_()
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    del model


def streams(provider: LocalProvider, n: int, max_new_tokens: int) -> dict[str, float]:
    """`n` greedy streams at once through LocalProvider.stream: median time to first text, per-stream
    decode rate, and the aggregate rate (every stream makes exactly max_new_tokens)."""
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0)
    marks: list[tuple[float, float]] = [(0.0, 0.0)] * n

    def run(i: int) -> None:
        first = None
        for item in provider.stream([Message("user", PROMPT)], params, CancelToken()):
            if isinstance(item, str) and first is None:
                first = time.perf_counter()
        marks[i] = (first or time.perf_counter(), time.perf_counter())

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = max(end for _, end in marks) - start
    return {"ttft_ms": statistics.median(first - start for first, _ in marks) * 1000,
            "stream_tok_s": statistics.median((max_new_tokens - 1) / max(end - first, 1e-9)
                                              for first, end in marks),
            "total_tok_s": n * max_new_tokens / wall}


def bench_engines(directory: Path, args) -> None:
    """Plain generate vs the continuous-batching engine: batch-1 and 1/4/8/16 streams at once."""
    rows, base = [], {}
    for engine, counts in (("generate", (1, 4)), ("batched", args.streams)):
        cuda = args.device == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        provider = NoEarlyStop(ProviderConfig(f"bench-{engine}", "local", str(directory), device=args.device,
                                              dtype=args.dtype, engine=engine, max_concurrency=max(counts)))
        t = time.perf_counter()
        provider.load(lambda fraction, message: print(f"  [{fraction:4.0%}] {message}"))
        load_s = time.perf_counter() - t
        used = "batched" if provider._weights.engine is not None else "generate"
        print(f"{engine}: load{' + warm-up' if used == 'batched' else ''} {load_s:.1f} s "
              f"on {provider.model.device} ({provider.model.dtype}), running {used}")
        streams(provider, 1, 8)     # warm-up: CUDA context, kernels, allocator
        for n in counts:
            runs = [streams(provider, n, args.max_new_tokens) for _ in range(args.runs if n == 1 else 1)]
            r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            base.setdefault(engine, r["total_tok_s"])
            rows.append((engine, n, r, r["total_tok_s"] / base[engine]))
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
        print(f"  peak GPU memory: {peak}")
        provider.close()
    print(f"\n{args.max_new_tokens} tokens per stream, greedy; batch-1 is the median of {args.runs} runs")
    print(f"{'engine':<9} {'streams':>7} {'TTFT ms':>9} {'tok/s per stream':>17} {'tok/s total':>12} "
          f"{'vs 1 stream':>11}")
    for engine, n, r, ratio in rows:
        print(f"{engine:<9} {n:>7} {r['ttft_ms']:>9.1f} {r['stream_tok_s']:>17.1f} {r['total_tok_s']:>12.1f} "
              f"{ratio:>10.2f}x")
    one = {engine: r for engine, n, r, _ in rows if n == 1}
    print(f"batch-1 decode, batched / plain generate: "
          f"{one['batched']['stream_tok_s'] / one['generate']['stream_tok_s']:.2f}x (goal >= 2x on a GPU)")
    eight = [ratio for engine, n, _, ratio in rows if engine == "batched" and n == 8]
    if eight:
        print(f"8 streams at once vs one stream, batched: {eight[0]:.2f}x total tokens/s (goal >= 5x)")


def bench_detokenizer(directory: Path, n_tokens: int) -> None:
    """Stream a long Chinese line with no newline through both detokenizers: same text, cost ratio."""
    from transformers import AutoTokenizer, TextIteratorStreamer

    tok = AutoTokenizer.from_pretrained(directory)
    line = "".join(s.split("。")[0] for s in corpus(2000))     # the Chinese halves only, no newline
    ids = tok.encode(line, add_special_tokens=False)[:n_tokens]
    t = time.perf_counter()
    detok = IncrementalDetokenizer(tok)
    ours = "".join(detok.add([i]) for i in ids) + detok.flush()
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    streamer = TextIteratorStreamer(tok, skip_special_tokens=True)
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    theirs = "".join(iter(streamer.text_queue.get, streamer.stop_signal))
    theirs_s = time.perf_counter() - t
    assert ours == theirs, "the detokenizers disagree"
    print(f"detokenizer on a {len(ids)}-token Chinese line ({len(ours)} chars, no newline):")
    print(f"  incremental: {ours_s * 1000:.1f} ms, {detok.decoded_tokens} tokens decoded; "
          f"TextIteratorStreamer: {theirs_s * 1000:.1f} ms, ~{len(ids) * (len(ids) + 1) // 2} tokens decoded")
    print(f"  ratio (TextIteratorStreamer time / incremental time): {theirs_s / ours_s:.1f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 on the CPU (smoke run)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="default 256 (32 with --tiny, 48 with --cpu)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16],
                        help="concurrent stream counts for the batching engine")
    parser.add_argument("--detok-tokens", type=int, default=None, help="default 4000 (1500 with --tiny)")
    parser.add_argument("--dir", help="where to save the model (default: a temporary folder)")
    parser.add_argument("--cpu", action="store_true",
                        help="issue 22's CPU comparison: transformers, in-process gguf, llama.cpp server")
    parser.add_argument("--llama-python", help="--cpu: a Python with llama-cpp-python[server], to run "
                        "llama.cpp's server (skipped without it)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "bench_out"),
                        help="--cpu: where the built models are cached (default: bench_out/)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4],
                        help="--cpu: requests at once")
    args = parser.parse_args(argv)
    if args.cpu:
        from bench.cpu_models import cpu_bench

        cpu_bench(Path(args.out), args.tiny, args.llama_python, args.max_new_tokens or 48, args.concurrency)
        return
    cuda = torch.cuda.is_available() and not args.tiny
    args.device, args.dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    args.max_new_tokens = args.max_new_tokens or (32 if args.tiny else 256)
    args.detok_tokens = args.detok_tokens or (1500 if args.tiny else 4000)
    if not args.tiny and not cuda:
        sys.exit("no CUDA GPU: the full-size run needs one (use --tiny for a CPU smoke run)")
    shapes = TINY if args.tiny else QWEN_1_8B
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp) / "qwen1.5-1.8b-random"
        t = time.perf_counter()
        build(directory, shapes, args.device, getattr(torch, args.dtype))
        print(f"built {'tiny Qwen2' if args.tiny else 'Qwen1.5-1.8B-shaped'} model in "
              f"{time.perf_counter() - t:.1f} s (torch {torch.__version__}, "
              f"{torch.cuda.get_device_name() if cuda else 'CPU'})")
        bench_engines(directory, args)
        bench_detokenizer(directory, args.detok_tokens)


if __name__ == "__main__":
    main()
