"""The local transformers provider, on tiny random models built offline, directly and through the Router."""

from __future__ import annotations

import shutil
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from configs import LINLY_TEMPLATE, ProviderConfig, load_settings
from llm.errors import CancelledError, ConfigError, InvalidRequestError, NotReadyError, UpstreamError
from llm.providers.local import IncrementalDetokenizer, LocalProvider
from llm.router import Router
from llm.types import CancelToken, GenerationParams, Message
from tests.tiny_models import (
    build_llama,
    build_remote_code_dir,
    build_sentencepiece_style_tokenizer,
    corpus,
    local_provider,
)

GREEDY = GenerationParams(max_new_tokens=24, temperature=0)
LONG = GenerationParams(max_new_tokens=2000, temperature=0)


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory):
    return build_llama(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return build_llama(tmp_path_factory.mktemp("tiny-base"), chat_template=None)


@pytest.fixture(scope="session")
def remote_dir(tmp_path_factory):
    return build_remote_code_dir(tmp_path_factory.mktemp("tiny-remote"))


@pytest.fixture(scope="session")
def shared_chat(chat_dir):
    """One loaded chat provider for the tests that do not care about loading."""
    p = local_provider(chat_dir)
    p.load()
    yield p
    p.close()


@pytest.fixture
def router(tmp_path, chat_dir, base_dir, remote_dir):
    path = tmp_path / "configs.yaml"
    path.write_text(f"""
default: tiny
providers:
  tiny: {{kind: local, model: "{chat_dir}", device: cpu}}
  linly: {{model: "{base_dir}", device: cpu}}
  remote: {{kind: local, model: "{remote_dir}", device: cpu}}
  missing: {{kind: local, model: linly-tests/never-downloaded, device: cpu}}
""", encoding="utf-8")
    r = Router(load_settings(path, env={}), env={})
    yield r
    r.close()


@contextmanager
def counting_forwards(provider: LocalProvider) -> Iterator[list[int]]:
    """A live count of the model's forward passes (one per generated token after the prompt)."""
    calls = [0]
    handle = provider.model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


@contextmanager
def capturing_prompts(provider: LocalProvider) -> Iterator[list[str]]:
    """The prompt text each generation actually fed the model (decoded from the prefill's input_ids)."""
    seen: list[str] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1:
            seen.append(provider.tokenizer.decode(ids[0]))

    handle = provider.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def generator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("generate-")]


def text_of(stream) -> str:
    """The reply text of a provider stream (its StreamEvents, such as the finish reason, left out)."""
    return "".join(item for item in stream if isinstance(item, str))


# ---- streaming -------------------------------------------------------------------------------

def test_chat_model_streams_text_in_several_chunks_through_the_router(router):
    *chunks, end = router.stream("你好", style=False, params={"max_new_tokens": 24, "temperature": 0})
    assert len(chunks) >= 3
    assert all(c.provider == "tiny" and c.text for c in chunks)
    assert end.text == "" and end.finish_reason in ("stop", "length")
    assert end.usage["completion_tokens"] > 0 and end.usage["total_tokens"] > end.usage["prompt_tokens"]


def test_text_arrives_while_the_model_is_still_generating(shared_chat):
    with counting_forwards(shared_chat) as calls:
        stream = shared_chat.stream([Message("user", "hello")], GenerationParams(max_new_tokens=200, temperature=0),
                                    CancelToken())
        next(stream)
        at_first_chunk = calls[0]
        rest = list(stream)
    assert at_first_chunk < 100 <= calls[0] and rest


def test_greedy_is_deterministic(shared_chat):
    messages = [Message("user", "如何应对压力")]
    first = text_of(shared_chat.stream(messages, GREEDY, CancelToken()))
    second = text_of(shared_chat.stream(messages, GREEDY, CancelToken()))
    assert first and first == second


def test_linly_preset_on_a_base_model_uses_the_upstream_prompt(router):
    provider = router.provider("linly")
    provider.load()
    with capturing_prompts(provider) as prompts:
        reply = router.chat("如何应对压力", provider="linly", system="你是数字人", history=[["你好", "你好！"]],
                            params={"max_new_tokens": 8})
    assert reply.provider == "linly"
    assert prompts == ["你是数字人 User: 你好 Bot: 你好！ ### Instruction:请用少于25个字回答以下问题 如何应对压力"
                       "  ### Response:"]


def test_render_prompt_for_base_and_chat_models(base_dir, shared_chat):
    messages = [Message("system", "S"), Message("user", "q1"), Message("assistant", "a1"), Message("user", "q2")]
    base = local_provider(base_dir, prompt_template=LINLY_TEMPLATE)
    assert base.render_prompt(messages) == "S User: q1 Bot: a1 ### Instruction:q2  ### Response:"
    assert base.render_prompt([Message("user", "q")]) == "### Instruction:q  ### Response:"
    chat = shared_chat.render_prompt(messages)
    assert chat.startswith("<|im_start|>system\nS<|im_end|>") and chat.endswith("<|im_start|>assistant\n")


def test_a_base_model_without_prompt_template_is_a_clear_config_error(base_dir):
    with pytest.raises(ConfigError, match="prompt_template"):
        list(local_provider(base_dir).stream([Message("user", "hi")], GREEDY, CancelToken()))


# ---- loading ---------------------------------------------------------------------------------

def test_loading_is_lazy_and_the_model_is_shared(router):
    provider = router.provider("tiny")
    assert router.statuses()["tiny"].ready and not provider.loaded
    router.chat("hi", params={"max_new_tokens": 4})
    model = provider.model
    assert provider.loaded and model is not None
    router.chat("again", params={"max_new_tokens": 4})
    assert provider.model is model


def own_copy(chat_dir, tmp_path):
    """The tiny chat model in a folder of its own: the pool shares weights loaded from the same folder."""
    return shutil.copytree(chat_dir, tmp_path / "own-copy")


def test_two_first_callers_load_once(chat_dir, tmp_path):
    provider = local_provider(own_copy(chat_dir, tmp_path))
    steps: list[str] = []
    start = threading.Barrier(3)
    replies: list[str] = []

    def first_call():
        start.wait()
        provider.load(lambda fraction, message: steps.append(message))
        replies.append(text_of(provider.stream([Message("user", "hi")], GREEDY, CancelToken())))

    threads = [threading.Thread(target=first_call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum("loading the weights" in s for s in steps) == 1
    assert len(replies) == 3 and len(set(replies)) == 1


def test_load_reports_progress_in_order_and_warms_up_before_ready(chat_dir, tmp_path):
    provider = local_provider(own_copy(chat_dir, tmp_path))
    progress: list[tuple[float, str]] = []
    provider.load(lambda fraction, message: progress.append((fraction, message)))
    assert progress == sorted(progress) and len(progress) >= 3 and progress[-1][0] == 1.0
    assert "warming up" in progress[-2][1]
    provider.close()
    assert not provider.loaded


def test_a_hub_id_loads_from_the_local_hf_cache(chat_dir, tmp_path, monkeypatch):
    repo = tmp_path / "models--tiny-org--tiny-chat"
    shutil.copytree(chat_dir, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))     # read when asked, not when imported
    provider = LocalProvider(ProviderConfig("tiny", "local", "tiny-org/tiny-chat", device="cpu"))
    assert provider.status().ready and not provider.loaded
    assert text_of(provider.stream([Message("user", "hi")], GREEDY, CancelToken()))


def test_missing_weights_are_not_ready_with_the_download_command(router):
    status = router.statuses()["missing"]
    assert not status.ready
    assert "weights for linly-tests/never-downloaded not found locally" in status.reason
    assert status.fix == "python -m llm download missing"
    with pytest.raises(NotReadyError, match="python -m llm download missing"):
        router.chat("hi", provider="missing")


def test_a_folder_without_config_json_is_not_ready(tmp_path):
    status = local_provider(tmp_path / "empty").status()
    assert not status.ready and "not found locally" in status.reason


def test_remote_code_needs_the_opt_in(router, remote_dir):
    status = router.statuses()["remote"]
    assert not status.ready and "set trust_remote_code: true for provider remote in configs.yaml" in status.fix
    with pytest.raises(NotReadyError, match="trust_remote_code: true for provider remote"):
        router.provider("remote").load()
    assert local_provider(remote_dir, trust_remote_code=True).status().ready


# ---- stopping --------------------------------------------------------------------------------

def test_cancel_stops_generation(shared_chat):
    cancel = CancelToken()
    with counting_forwards(shared_chat) as calls:
        with pytest.raises(CancelledError):
            for _ in shared_chat.stream([Message("user", "hi")], LONG, cancel):
                cancel.cancel()
        done = calls[0]
        time.sleep(0.05)
        assert calls[0] == done < 100
    assert not generator_threads()


def test_closing_the_stream_early_stops_generation(router):
    provider = router.provider("tiny")
    provider.load()
    with counting_forwards(provider) as calls:
        stream = router.stream("hi", style=False, params={"max_new_tokens": 2000, "temperature": 0})
        next(stream)
        stream.close()
        done = calls[0]
        time.sleep(0.05)
        assert calls[0] == done < 100
    assert not generator_threads()


def test_an_error_while_generating_is_a_typed_error(shared_chat):
    def out_of_memory_on_third_step(module, args, output):
        calls.append(1)
        if len(calls) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    calls: list[int] = []
    handle = shared_chat.model.register_forward_hook(out_of_memory_on_third_step)
    try:
        with pytest.raises(UpstreamError, match="out of GPU memory") as info:
            list(shared_chat.stream([Message("user", "hi")], LONG, CancelToken()))
    finally:
        handle.remove()
    assert info.value.status == 503 and isinstance(info.value.__cause__, torch.cuda.OutOfMemoryError)
    assert not generator_threads()


# ---- tokens and history ----------------------------------------------------------------------

def test_incremental_detokenizer_matches_a_full_decode(shared_chat):
    tok = shared_chat.tokenizer
    text = " ".join(corpus(20)) + " 数字人😀 emoji ç"
    ids = tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add([i]) for i in ids] + [detok.flush()]
    assert "".join(pieces) == tok.decode(ids, clean_up_tokenization_spaces=False) == text
    assert sum(1 for p in pieces if p) > len(ids) // 2


def test_incremental_detokenizer_keeps_sentencepiece_spaces_and_byte_fallback():
    tok = build_sentencepiece_style_tokenizer()
    text = "hello world 数字人 how to handle stress 😀 ok ç"
    ids = tok.encode(text, add_special_tokens=False)
    assert "".join(tok.decode([i]) for i in ids) != text     # token-by-token decoding loses the spaces
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.add([i]) for i in ids) + detok.flush() == text


def test_incremental_detokenizer_matches_on_random_bytes(shared_chat):
    tok = shared_chat.tokenizer
    ids = torch.randint(3, len(tok), (500,), generator=torch.Generator().manual_seed(0)).tolist()
    detok = IncrementalDetokenizer(tok)
    streamed = "".join(detok.add([i]) for i in ids) + detok.flush()
    assert streamed == tok.decode(ids, clean_up_tokenization_spaces=False)


def test_incremental_detokenizer_cost_is_linear_on_a_long_line(shared_chat):
    tok = shared_chat.tokenizer
    line = "".join(corpus(300)).replace("\n", "")
    ids = tok.encode(line, add_special_tokens=False)[:2000]
    assert len(ids) == 2000
    detok = IncrementalDetokenizer(tok)
    for i in ids:
        detok.add([i])
    detok.flush()
    assert detok.decode_calls <= 2 * len(ids) + 2
    assert detok.decoded_tokens <= 4 * len(ids)     # re-decoding the line each token would be ~2,000,000


def test_count_tokens_uses_the_tokenizer_once_loaded(chat_dir):
    provider = local_provider(chat_dir)
    messages = [Message("user", "数字人 hello world " * 10)]
    estimate = provider.count_tokens(messages)
    provider.load()
    exact = 4 + len(provider.tokenizer.encode(messages[0].content, add_special_tokens=False))
    assert provider.count_tokens(messages) == exact != estimate


def test_context_window_comes_from_the_model_once_loaded(chat_dir):
    provider = local_provider(chat_dir)
    assert provider.context_window == 8192
    provider.load()
    assert provider.context_window == 512
    capped = local_provider(chat_dir, context_window=100)
    capped.load()
    assert capped.context_window == 100


def test_history_is_trimmed_oldest_first_keeping_the_system_prompt(chat_dir):
    provider = local_provider(chat_dir, context_window=120)
    turns = [Message("user" if i % 2 == 0 else "assistant", f"第{i}轮 数字人 hello world 今天天气很好")
             for i in range(12)]
    messages = [Message("system", "你是数字人")] + turns + [Message("user", "最后的问题")]
    kept = provider.fit(messages, reserve=40)
    assert kept[0] == messages[0] and kept[-1] == messages[-1]
    assert kept[1:-1] == turns[len(turns) - (len(kept) - 2):] and len(kept) < len(messages)
    assert provider.count_tokens(kept) <= 120 - 40


def test_a_chat_template_that_rejects_the_messages_is_an_invalid_request(shared_chat):
    original = shared_chat.tokenizer.chat_template
    shared_chat.tokenizer.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        + original)
    try:
        with pytest.raises(InvalidRequestError, match="System role not supported"):
            list(shared_chat.stream([Message("system", "S"), Message("user", "hi")], GREEDY, CancelToken()))
    finally:
        shared_chat.tokenizer.chat_template = original


# ---- no torch until a local model is used ----------------------------------------------------------

def test_readiness_is_decided_from_files_without_importing_torch(chat_dir, remote_dir, tmp_path):
    """A process that never generates with a local model never imports torch or transformers (seconds,
    and libtorch mapped): /health, the page's dropdown and `python -m llm status` all ask status()."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    unknown = tmp_path / "unknown-type"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no_such_model_type"}))
    code = f"""
import json, sys
from configs import ProviderConfig, Settings, PRESETS
from llm.router import Router
providers = {{**PRESETS,
    "tiny": ProviderConfig("tiny", "local", {str(chat_dir)!r}),
    "remote": ProviderConfig("remote", "local", {str(remote_dir)!r}),
    "trusted": ProviderConfig("trusted", "local", {str(remote_dir)!r}, trust_remote_code=True),
    "unknown": ProviderConfig("unknown", "local", {str(unknown)!r}),
    "absent": ProviderConfig("absent", "local", "linly-tests/never-downloaded")}}
router = Router(Settings(providers=providers, default="direct"), env={{}})
ready = {{name: s.ready for name, s in router.statuses().items()}}
print(json.dumps({{"ready": ready, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}}))
"""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["transformers"] is False
    ready = result["ready"]
    assert ready["tiny"] and ready["trusted"] and ready["direct"]
    assert not ready["remote"] and not ready["unknown"] and not ready["absent"] and not ready["qwen"]


@pytest.mark.parametrize("pieces", [["ab", "cd", "e"], ["a", "b", "c", "d"], ["xab", "cdy"], ["abcd"]])
def test_a_stop_string_split_across_the_first_deltas_still_ends_the_text(pieces):
    from llm.providers.local.text import StopAt

    stop = StopAt(["abcd"])
    out = "".join(stop.feed(p) for p in pieces)
    assert stop.hit and out + stop.flush() == "".join(pieces).split("abcd")[0]
