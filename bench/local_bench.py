"""LocalProvider on a random-weight Qwen1.5-1.8B (real shapes, bf16, CUDA): TTFT, decode tokens/s,
peak GPU memory; plus the incremental detokenizer vs. TextIteratorStreamer re-decoding a long Chinese line.

    python bench/local_bench.py            # GPU: the real Qwen1.5-1.8B architecture
    python bench/local_bench.py --tiny     # CPU smoke run, well under a minute

Offline: the model and a byte-level BPE tokenizer are built locally; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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

    def generate_kwargs(self, params):
        return super().generate_kwargs(params) | {"min_new_tokens": params.max_new_tokens}


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


def run_once(provider: LocalProvider, max_new_tokens: int) -> dict[str, float]:
    """One greedy generation through LocalProvider.stream; times of each forward (= each token)."""
    cuda = provider.model.device.type == "cuda"
    marks: list[float] = []

    def mark(*_):
        if cuda:
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    handle = provider.model.register_forward_hook(mark)
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0)
    first_text = None
    start = time.perf_counter()
    try:
        for _ in provider.stream([Message("user", PROMPT)], params, CancelToken()):
            first_text = first_text or time.perf_counter()
    finally:
        handle.remove()
    decode_s = marks[-1] - marks[0]
    return {"ttft_ms": (marks[0] - start) * 1000, "first_text_ms": ((first_text or start) - start) * 1000,
            "tokens": len(marks), "decode_tok_s": (len(marks) - 1) / decode_s if decode_s > 0 else 0.0}


def bench_provider(directory: Path, args) -> None:
    provider = NoEarlyStop(ProviderConfig("bench", "local", str(directory), device=args.device,
                                          dtype=args.dtype))
    t = time.perf_counter()
    provider.load(lambda fraction, message: print(f"  [{fraction:4.0%}] {message}"))
    print(f"load: {time.perf_counter() - t:.1f} s on {provider.model.device} ({provider.model.dtype})")
    prompt_tokens = len(provider.tokenizer(provider.render_prompt([Message("user", PROMPT)]))["input_ids"])
    run_once(provider, 8)   # warm-up: CUDA context, kernels, allocator
    if torch.cuda.is_available() and provider.model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runs = [run_once(provider, args.max_new_tokens) for _ in range(args.runs)]
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"prompt {prompt_tokens} tokens, generated {median['tokens']:.0f} tokens (greedy), "
          f"median of {args.runs} runs")
    print(f"time to first token: {median['ttft_ms']:.1f} ms (first text out of stream: "
          f"{median['first_text_ms']:.1f} ms)")
    print(f"decode: {median['decode_tok_s']:.1f} tokens/s")
    if provider.model.device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        torch.backends.cuda.enable_cudnn_sdp(True)     # what LocalProvider turns off, for comparison
        cudnn = run_once(provider, args.max_new_tokens)
        torch.backends.cuda.enable_cudnn_sdp(False)
        print(f"decode with cuDNN attention (torch's default, off in LocalProvider): "
              f"{cudnn['decode_tok_s']:.1f} tokens/s")
    provider.close()


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
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 256 (32 with --tiny)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--detok-tokens", type=int, default=None, help="default 4000 (1500 with --tiny)")
    parser.add_argument("--dir", help="where to save the model (default: a temporary folder)")
    args = parser.parse_args(argv)
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
        bench_provider(directory, args)
        bench_detokenizer(directory, args.detok_tokens)


if __name__ == "__main__":
    main()
