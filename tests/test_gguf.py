"""The gguf kind: tiny random-weight GGUF files built offline (tests/tiny_gguf.py), run by llama-cpp-python on
the CPU, directly and through the Router. Random weights make noise, so the tests check lengths, counts and
repeats, or force text with logit_bias (token 98 is "b"; 511 is <|im_end|>, the eos). The tests that need
llama-cpp-python are skipped without it; the ones about it missing run everywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from configs import ProviderConfig, Settings, load_settings
from llm.errors import CancelledError, ConfigError, InvalidRequestError, NotReadyError
from llm.providers import gguf, provider_class
from llm.providers.gguf import GGUFProvider
from llm.router import Router
from llm.types import CancelToken, GenerationParams, Message
from tests.tiny_gguf import build_gguf

B, EOS, ENDOFTEXT = "98", "511", "509"      # token ids in tiny_gguf's vocabulary
NO_END = {EOS: -100, ENDOFTEXT: -100}       # noise that runs to max_new_tokens
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install llama-cpp-python")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return build_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def shared(llama_cpp, tiny):
    """One loaded provider for the tests that do not care about loading."""
    p = provider(tiny)
    p.load()
    yield p
    p.close()


@pytest.fixture
def router(tmp_path, tiny):
    path = tmp_path / "configs.yaml"
    path.write_text(f"""
default: tiny
providers:
  tiny: {{kind: gguf, model: "{tiny}"}}
  pair: {{kind: gguf, model: "{tiny}", max_concurrency: 2}}
""", encoding="utf-8")
    r = Router(load_settings(path, env={}), env={})
    yield r
    r.close()


@pytest.fixture
def evals(llama_cpp, monkeypatch):
    """A live count of llama.cpp decodes (the prompt's, then one per generated token); `evals.delay` slows
    each one, so another thread's cancel lands mid-stream."""
    class Count:
        n, delay = 0, 0.0
    count, real = Count(), llama_cpp.Llama.eval

    def counting(self, tokens):
        real(self, tokens)
        count.n += 1
        time.sleep(count.delay)
    monkeypatch.setattr(llama_cpp.Llama, "eval", counting)
    return count


def provider(model, **kw) -> GGUFProvider:
    return GGUFProvider(ProviderConfig("tiny", "gguf", str(model), **kw))


def params(**kw) -> GenerationParams:
    extra = {"logit_bias": kw.pop("bias")} if "bias" in kw else None
    return GenerationParams(**({"max_new_tokens": 24, "temperature": 0} | kw), extra=extra)


def text_of(stream) -> str:
    return "".join(item for item in stream if isinstance(item, str))


HI = [Message("user", "hi")]


# ---- streaming ---------------------------------------------------------------------------------------------

def test_streams_several_deltas_through_the_router_with_the_token_counts(router, llama_cpp):
    *chunks, end = router.stream("你好", style=False, params=params(bias=NO_END))
    assert len(chunks) >= 3 and all(c.provider == "tiny" and c.text for c in chunks)
    assert end.finish_reason == "length"
    prompt = len(router.provider("tiny").prompt_tokens([Message("user", "你好")]))
    assert end.usage == {"prompt_tokens": prompt, "completion_tokens": 24, "total_tokens": prompt + 24}


def test_the_chat_template_comes_from_the_file(shared):
    prompt, templated = shared.render_prompt([Message("system", "be brief"), Message("user", "你好")])
    assert templated and prompt == ("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n你好<|im_end|>\n"
                                    "<|im_start|>assistant\n")
    assert shared.prompt_tokens(HI)[0] == 510   # <|im_start|>: one special token, not its letters


def test_a_file_without_chat_template_needs_prompt_template(llama_cpp, tmp_path):
    bare = build_gguf(tmp_path / "bare.gguf", chat_template=None)
    with pytest.raises(ConfigError, match="set prompt_template for provider tiny"):
        list(provider(bare).stream(HI, params(), CancelToken()))
    p = provider(bare, prompt_template="Q: {prompt}\nA:")
    assert p.render_prompt(HI) == ("Q: hi\nA:", False)
    assert len(text_of(p.stream(HI, params(max_new_tokens=5, bias=NO_END), CancelToken()))) > 0


def test_the_eos_ends_the_reply_and_logit_bias_steers_it(shared):
    assert list(shared.stream(HI, params(bias={EOS: 100}), CancelToken()))[-1].finish_reason == "stop"
    assert text_of(shared.stream(HI, params(max_new_tokens=7, bias={B: 100}), CancelToken())) == "b" * 7
    with pytest.raises(InvalidRequestError, match="logit_bias must map token ids"):
        list(shared.stream(HI, params(bias={"100000": 5}), CancelToken()))


# ---- stopping ----------------------------------------------------------------------------------------------

def test_a_cancel_from_another_thread_stops_within_one_token(shared, evals):
    cancel, at_cancel = CancelToken(), []
    evals.delay = 0.01

    def cancel_mid_stream():
        while evals.n < 10:
            time.sleep(0.001)
        at_cancel.append(evals.n)
        cancel.cancel()
    canceller = threading.Thread(target=cancel_mid_stream)
    canceller.start()
    got = []
    with pytest.raises(CancelledError):
        for item in shared.stream(HI, params(max_new_tokens=2000, bias={B: 100}), cancel):
            got.append(item)
    canceller.join()
    done = evals.n
    time.sleep(0.05)
    assert evals.n == done <= at_cancel[0] + 1      # the decode under way when it came, and no more
    assert got == ["b"] * len(got) and 8 <= len(got) <= 10     # one delta per decode after the prompt's


def test_stop_strings_end_the_text_before_them(shared):
    whole = text_of(shared.stream(HI, params(max_new_tokens=40, seed=3, temperature=1.0, bias=NO_END),
                                  CancelToken()))
    stop = whole[20:23]
    cut = list(shared.stream(HI, params(max_new_tokens=40, seed=3, temperature=1.0, bias=NO_END,
                                        stop=["never here", stop]), CancelToken()))
    assert text_of(cut) == whole[:whole.index(stop)] and cut[-1].finish_reason == "stop"
    assert text_of(shared.stream(HI, params(bias={B: 100}, stop=["bbb"]), CancelToken())) == ""


def test_the_speech_budget_ends_the_stream_and_its_generation(router, evals):
    router.provider("tiny").load()
    before = evals.n
    *chunks, end = router.stream("hi", max_chars=10, params=params(max_new_tokens=2000, bias={B: 100}))
    text = "".join(c.text for c in chunks)
    said = text.removesuffix(".")   # the cut ends the sentence
    assert set(said) == {"b"} and 10 <= len(said) <= 15 and end.finish_reason == "length"
    time.sleep(0.05)
    # the prompt, the 15 tokens the cut reads (1.5x the budget, for a sentence end), at most one more
    assert evals.n - before <= 1 + 15 + 1


def test_max_new_tokens_and_the_context_bound_the_reply(llama_cpp, tiny):
    p = provider(tiny, context_window=64)
    assert p.n_ctx == p.context_window == 64
    items = list(p.stream(HI, params(max_new_tokens=1000, bias={B: 100}), CancelToken()))
    assert items[-1].usage["total_tokens"] == 64 and items[-1].finish_reason == "length"
    with pytest.raises(InvalidRequestError, match="the prompt is .* tokens and tiny has a context of 64"):
        list(p.stream([Message("user", "x" * 200)], params(), CancelToken()))


# ---- sampling ----------------------------------------------------------------------------------------------

def test_the_same_seed_repeats_the_text_and_another_seed_does_not(shared):
    def sample(seed: int) -> str:
        return text_of(shared.stream(HI, params(max_new_tokens=30, temperature=1.0, top_k=0, seed=seed,
                                                bias=NO_END), CancelToken()))
    first = sample(7)
    assert len(first) >= 10
    assert sample(7) == first and sample(8) != first
    assert sample(7) == first      # after another conversation used the cache


def test_sampling_params_map_to_llama_cpp(shared):
    defaults = shared.sampling(GenerationParams())
    assert defaults == {"temp": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.0,
                        "frequency_penalty": 0.0, "presence_penalty": 0.0}
    mapped = shared.sampling(GenerationParams(temperature=0.3, top_p=0.5, top_k=7, repetition_penalty=1.2,
                                              frequency_penalty=0.4, presence_penalty=-0.2))
    assert mapped == {"temp": 0.3, "top_p": 0.5, "top_k": 7, "min_p": 0.05, "repeat_penalty": 1.2,
                      "frequency_penalty": 0.4, "presence_penalty": -0.2}
    assert shared.sampling(GenerationParams(temperature=0))["temp"] == 0.0     # greedy


# ---- loading and concurrency -------------------------------------------------------------------------------

def test_loading_is_lazy_once_and_thread_safe(llama_cpp, tiny):
    p = provider(tiny)
    assert not p.loaded and p.status().ready
    threads = [threading.Thread(target=p.load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert p.loaded and p.loads == 1
    text_of(p.stream(HI, params(max_new_tokens=3), CancelToken()))
    assert p.loads == 1
    p.close()
    assert not p.loaded


def test_two_slots_generate_at_once(llama_cpp, tiny):
    p = provider(tiny, max_concurrency=2)
    both_started = threading.Barrier(2, timeout=10)
    results: list[str] = []

    def run():
        stream = p.stream(HI, params(max_new_tokens=30, bias=NO_END), CancelToken())
        first = next(stream)
        both_started.wait()     # each holds a stream mid-generation: they really run side by side
        results.append(first + text_of(stream))
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and p.loads == 2
    assert p.threads == max(1, gguf.physical_cores() // 2)
    p.close()


def test_one_slot_serializes_and_a_waiter_can_be_cancelled(shared):
    holder = shared.stream(HI, params(max_new_tokens=30, bias=NO_END), CancelToken())
    next(holder)        # holds the only Llama
    cancel = CancelToken()
    threading.Timer(0.2, cancel.cancel).start()
    start = time.perf_counter()
    with pytest.raises(CancelledError, match="waiting for a free slot"):
        list(shared.stream(HI, params(), cancel))
    assert 0.15 < time.perf_counter() - start < 2
    holder.close()      # gives it back
    assert text_of(shared.stream(HI, params(max_new_tokens=3), CancelToken()))
    assert shared.loads == 1


def test_the_router_runs_two_requests_at_once_with_max_concurrency_2(router, llama_cpp):
    replies: list[str] = []

    def ask():
        replies.append(router.chat("hi", provider="pair", style=False,
                                   params=params(max_new_tokens=20, bias=NO_END)).text)
    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(replies) == 2 and all(replies)


def test_n_ctx_and_threads(llama_cpp, tmp_path, monkeypatch):
    long = build_gguf(tmp_path / "long.gguf", context=32768)
    assert provider(long).n_ctx == gguf.DEFAULT_N_CTX == 8192
    assert provider(long, context_window=2048).n_ctx == 2048
    short = build_gguf(tmp_path / "short.gguf", context=1024)
    assert provider(short, context_window=4096).n_ctx == 1024      # never past the file's own
    monkeypatch.setattr(gguf, "physical_cores", lambda: 8)
    assert provider(short).threads == 8 and provider(short, max_concurrency=3).threads == 2
    p = provider(long, context_window=2048)
    p.load()
    assert p._first.n_ctx() == 2048


def test_a_model_too_big_for_the_ram_is_not_loaded(llama_cpp, tiny, monkeypatch):
    monkeypatch.setattr(gguf, "memory", lambda: (100_000, 50_000))
    with pytest.raises(NotReadyError, match="needs about .* GB of RAM for tiny.gguf") as e:
        provider(tiny).load()
    assert "smaller quantization" in e.value.fix


# ---- readiness, from files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["half", "header", "text", "empty"])
def test_a_broken_file_is_not_ready_naming_it_and_the_fix(llama_cpp, tiny, tmp_path, damage):
    data = tiny.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes({"half": data[:len(data) // 2], "header": data[:3000], "empty": b"",
                        "text": b"not a model, just text\n" * 40}[damage])
    p = provider(broken)
    status = p.status()
    assert not status.ready and str(broken) in status.reason
    assert {"half": "is truncated", "header": "cut short", "text": "does not start with GGUF",
            "empty": "too short"}[damage] in status.reason
    assert status.fix == f"replace {broken} with a complete .gguf file (download or convert it again)"
    with pytest.raises(NotReadyError, match="broken.gguf"):
        p.load()


def test_llama_cpp_refusing_a_file_is_a_clean_not_ready(llama_cpp, tiny, tmp_path):
    """A file whose header looks whole but that llama.cpp still cannot load (here: no tensors it knows)."""
    odd = tmp_path / "odd.gguf"
    shutil.copy(tiny, odd)
    data = bytearray(odd.read_bytes())
    at = data.index(b"token_embd.weight")
    data[at:at + 5] = b"xxxxx"      # a tensor llama.cpp does not expect, another it misses
    odd.write_bytes(bytes(data))
    with pytest.raises(NotReadyError, match="llama.cpp could not load .*odd.gguf") as e:
        provider(odd).load()
    assert "replace" in e.value.fix


def test_a_missing_file_names_the_fix(llama_cpp, tmp_path):
    status = provider(tmp_path / "nope.gguf").status()
    assert not status.ready and "nope.gguf does not exist" in status.reason
    assert "put the .gguf file at" in status.fix
    status = provider(tmp_path / "nope.gguf", download="org/repo-GGUF:x.gguf").status()
    assert status.fix == "python -m llm download tiny"


def hub(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """A Hugging Face cache entry as huggingface_hub writes one: refs/main and a snapshot of links."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snap = folder / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for name, source in files.items():
        (snap / name).symlink_to(source)


def test_a_hub_file_is_read_from_the_cache_only(llama_cpp, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    missing = provider("Qwen/Qwen2.5-0.5B-Instruct-GGUF:*q4_k_m.gguf").status()
    assert not missing.ready and missing.fix == "python -m llm download tiny"
    assert "no file matching *q4_k_m.gguf of Qwen/Qwen2.5-0.5B-Instruct-GGUF" in missing.reason
    hub(tmp_path, "org/tiny-GGUF", {"tiny-Q4_K_M.gguf": tiny, "tiny-Q8_0.gguf": tiny, "README.md": tiny})
    assert provider("org/tiny-GGUF:*q4_k_m.gguf").status().ready
    assert provider("org/tiny-GGUF:tiny-Q8_0.gguf").status().ready
    assert provider("org/tiny-GGUF", quantization="q8_0").status().ready
    several = provider("org/tiny-GGUF").status()
    assert not several.ready and "2 files of org/tiny-GGUF match *.gguf" in several.reason
    assert "set quantization" in several.fix
    p = provider("org/tiny-GGUF", quantization="Q4_K_M")
    assert len(text_of(p.stream(HI, params(max_new_tokens=4, bias=NO_END), CancelToken()))) > 0


def test_a_split_model_needs_all_its_parts(llama_cpp, tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    hub(tmp_path, "org/big-GGUF", {"big-q4_k_m-00001-of-00002.gguf": tiny})
    status = provider("org/big-GGUF", quantization="q4_k_m").status()
    assert not status.ready and "big-q4_k_m-00002-of-00002.gguf, a part of the split model" in status.reason


def test_without_llama_cpp_it_is_not_ready_naming_the_pip_command(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)     # as if not installed: importing it fails
    p = provider_class("gguf")(ProviderConfig("tiny", "gguf", str(tiny)))
    status = p.status()
    assert not status.ready and status.fix == "pip install llama-cpp-python"
    assert "llama-cpp-python is not installed" in status.reason and "10-15 minutes" in status.reason
    with pytest.raises(NotReadyError) as e:
        p.load()
    assert e.value.fix == "pip install llama-cpp-python"
    router = Router(Settings(providers={"tiny": p.config}, default="tiny"), env={})
    assert router.statuses()["tiny"].fix == "pip install llama-cpp-python"
    with pytest.raises(NotReadyError, match="pip install llama-cpp-python"):
        router.chat("hi")


def test_readiness_never_imports_llama_cpp(tiny, tmp_path):
    """status() (the page's dropdown, /health, `python -m llm status`) reads headers and folders only."""
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny.read_bytes()[:1000])
    code = f"""
import json, sys
from configs import ProviderConfig, Settings
from llm.router import Router
providers = {{"tiny": ProviderConfig("tiny", "gguf", {str(tiny)!r}),
             "broken": ProviderConfig("broken", "gguf", {str(broken)!r}),
             "hub": ProviderConfig("hub", "gguf", "org/never-GGUF:*q4_k_m.gguf")}}
router = Router(Settings(providers=providers, default="tiny"), env={{}})
statuses = {{name: s.ready for name, s in router.statuses().items()}}
print(json.dumps({{"ready": statuses, "llama_cpp": "llama_cpp" in sys.modules}}))
"""
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["llama_cpp"] is False
    assert not result["ready"]["broken"] and not result["ready"]["hub"]


def test_the_header_reader_sizes_the_kv_cache(tiny):
    header = gguf.read_header(tiny)
    assert header.arch == "llama" and header.context_length == 4096 and header.needed == header.size
    assert header.kv_bytes_per_token() == 2 * 2 * (16 + 16) * 2     # layers * kv heads * (K + V dims) * f16


# ---- configuration -----------------------------------------------------------------------------------------

def test_config_takes_a_gguf_quantization(tmp_path):
    path = tmp_path / "configs.yaml"
    path.write_text("providers:\n  small: {kind: gguf, model: Qwen/Qwen2.5-0.5B-Instruct-GGUF, "
                    "quantization: q4_k_m, max_concurrency: 2}\n", encoding="utf-8")
    cfg = load_settings(path, env={}).providers["small"]
    assert (cfg.kind, cfg.quantization, cfg.max_concurrency) == ("gguf", "q4_k_m", 2)
    path.write_text("providers:\n  small: {kind: gguf, model: x.gguf, quantization: 4bit}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a GGUF quantization such as q4_k_m"):
        load_settings(path, env={})
    path.write_text("providers:\n  small: {kind: local, model: x, quantization: q4_k_m}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be 8bit, 4bit or null"):
        load_settings(path, env={})


def test_model_names_a_path_or_a_hub_file():
    assert gguf.source("/models/a.gguf") == gguf.Source(path=Path("/models/a.gguf"))
    assert gguf.source("org/a-GGUF:*q4_k_m.gguf") == gguf.Source(repo="org/a-GGUF", pattern="*q4_k_m.gguf")
    assert gguf.source("org/a-GGUF", "Q8_0") == gguf.Source(repo="org/a-GGUF", pattern="*Q8_0*.gguf")
    assert gguf.source("models/a.gguf") == gguf.Source(path=Path("models/a.gguf"))
    assert gguf.source("C:\\models\\a.gguf").path is not None


def test_the_file_picked_from_a_repo_s_list():
    names = ["README.md", "a-Q4_K_M.gguf", "a-q8_0.gguf", "big/a-q4_k_m-00001-of-00002.gguf",
             "big/a-q4_k_m-00002-of-00002.gguf"]
    assert gguf.matching(names, "*q8_0.gguf") == ["a-q8_0.gguf"]
    assert gguf.matching(names, "*q4_k_m*.gguf") == ["a-Q4_K_M.gguf", *names[3:]]
    assert gguf.matching(names, "a-q4_k_m-00001-of-00002.gguf") == names[3:]    # the other part comes too
