"""Speech v2: the spoken-time budget per language, no held-back sentences, reasoning never spoken,
TTS-ready text, emotion tags; unit-level and through the HTTP API with fake upstreams."""

from __future__ import annotations

import pytest
import requests

from configs import ProviderConfig
from llm import speech
from llm.__main__ import main as llm_cli
from llm.speech import Budget, EmotionTags, ReplyFilter, SentenceSplitter, for_tts, speak, spoken_seconds
from tests.api_helpers import serve_router, sse_events
from tests.fake_servers import FakeOpenAIServer, _delta, _openai_head

VERBOSE_EN = ("Take a few slow, deep breaths. Then go for a short walk outside. Talk to a friend you trust "
              "about what is worrying you. Try to sleep at the same time every night.")
VERBOSE_ZH = "压力大的时候，可以先深呼吸几次。然后出去散散步，和信任的朋友聊一聊。每天按时睡觉也很重要。"
MIXED = "我最近在读 The Little Prince，这本书讲了一个小王子的故事。它很适合在睡前读，也适合学英语。"


def run(deltas, budget=Budget(), **kw) -> str:
    return "".join(text for text, _ in speak(iter(deltas), budget, **kw) if isinstance(text, str))


def chars(text: str) -> list[str]:
    return list(text)


# ---- the budget in seconds ---------------------------------------------------------------------

@pytest.mark.parametrize("reply, lang", [(VERBOSE_EN, "en"), (VERBOSE_ZH, "zh"), (MIXED, "zh")])
def test_every_language_is_cut_at_a_sentence_end_within_the_spoken_budget(reply, lang):
    out = run(chars(reply), Budget(seconds=5), lang=lang)
    assert out and reply.startswith(out) and out[-1] in "。.!?！？"
    assert spoken_seconds(out) <= 5 < spoken_seconds(reply)


def test_english_gets_words_not_characters():
    out = run(chars(VERBOSE_EN), Budget(seconds=5), lang="en")
    assert out == "Take a few slow, deep breaths."     # 6 words, 2.4 s: the next sentence would make 5.2 s
    # the old budget: a first sentence of 30 characters is within 1.5x of 25, so it is not cut
    assert run(chars(VERBOSE_EN), Budget(chars=25), lang="en") == "Take a few slow, deep breaths."


def test_the_instruction_names_the_length_in_the_users_language():
    assert Budget().instruction("如何应对压力") == "请用少于25个字回答以下问题"
    assert "at most 12 words" in Budget().instruction("How do I handle stress?")
    assert "at most 25 words" in Budget(seconds=10).instruction("How do I handle stress?")
    assert Budget(chars=40).instruction("How?").count("40 characters") == 1


def test_numbers_and_symbols_are_counted_as_they_are_said():
    said = spoken_seconds("二零二四年增长了百分之三十")
    assert abs(spoken_seconds("2024年增长了30%") - said) / said < 0.2
    assert spoken_seconds("It grew 30 percent in 2024.") == pytest.approx(spoken_seconds(
        "It grew thirty percent in twenty twenty-four."), rel=0.35)
    assert spoken_seconds("你好") == pytest.approx(0.4) and spoken_seconds("hello there") == pytest.approx(0.8)


def test_an_english_hard_cut_is_the_last_resort_and_never_splits_a_word():
    out = run(chars("word " * 40), Budget(seconds=2), lang="en")
    assert out == "word word word word word."     # no phrase boundary: whole words within the budget


# ---- no held-back sentences -----------------------------------------------------------------------

def test_a_sentence_end_is_released_the_moment_it_arrives():
    speaker = speech.SpeechFilter(Budget(seconds=30))
    assert speaker.feed("第一句话。") == "第一句话。"        # no wait for the next character
    assert speaker.feed("Is it 3.") == ""                    # only "." waits
    assert speaker.feed("14? ") == "Is it 3.14?"
    splitter = SentenceSplitter()
    assert splitter.feed("你好！") == ["你好！"]


def test_over_http_the_first_sentence_reaches_the_tts_before_the_second_is_written():
    with FakeOpenAIServer(["第一句话。第二句话。"], chunks=2, chunk_delay=0.6) as fake:
        server = serve_router([ProviderConfig("paused", "openai", "m", base_url=fake.base_url)])
        try:
            reply = requests.post(server.url, json={"prompt": "你好", "provider": "paused", "stream": True,
                                                    "max_seconds": 30}, stream=True, timeout=30)
            events = sse_events(reply)
        finally:
            server.stop()
    first_at, first = events[0]
    assert first["sentence"] == "第一句话。" and first_at < 1.0          # the second comes at ~1.2 s
    assert events[-1][1]["timings"]["first_sentence_ms"] < 1000


# ---- reasoning is never spoken ------------------------------------------------------------------------

def test_think_blocks_split_across_deltas_are_dropped_styled_or_not():
    deltas = ["<thi", "nk>用户问天气，我应该", "简短回答。</th", "ink>\n今天晴。"]
    assert run(deltas) == "今天晴。"
    assert run(deltas, None) == "今天晴。"
    assert run(["<think>I keep thinking and never close the tag"], None) == ""
    assert run(["a < b, and <thin", "g> is not a tag"], None) == "a < b, and <thing> is not a tag"


def test_control_characters_go_and_no_reply_ends_in_white_space():
    f = ReplyFilter()
    out = f.feed("  你好\x07世界\u200b。 ") + f.feed(" \n") + f.finish()
    assert out == "你好世界。"


class ReasoningServer(FakeOpenAIServer):
    """An OpenAI-compatible server that streams `reasoning_content` deltas before the answer (vLLM, DeepSeek)."""

    def _events(self, model, pieces, finish="stop", body=None):
        head = _openai_head(model, "chat.completion.chunk")
        for thought in ("Let me think", " about the weather."):
            yield {**head, "choices": [_delta({"role": "assistant", "content": None,
                                               "reasoning_content": thought})]}, False
        yield from super()._events(model, pieces, finish, body)


@pytest.mark.parametrize("route", ["seed", "v1"])
def test_reasoning_never_reaches_the_reply_or_the_sentence_stream(route):
    with ReasoningServer(["<think>先想一想</think>今天晴，适合散步。"]) as fake:
        server = serve_router([ProviderConfig("r1", "openai", "m", base_url=fake.base_url)])
        try:
            if route == "seed":
                reply = requests.post(server.url, stream=True, timeout=30,
                                      json={"prompt": "天气？", "provider": "r1", "stream": True})
                events = [data for _, data in sse_events(reply)]
                texts = [e["sentence"] for e in events if "sentence" in e] + [events[-1]["response"]]
            else:
                reply = requests.post(f"{server.url}/v1/chat/completions", timeout=30, json={
                    "model": "r1", "messages": [{"role": "user", "content": "天气？"}]})
                texts = [reply.json()["choices"][0]["message"]["content"]]
        finally:
            server.stop()
    assert texts[-1] == "今天晴，适合散步。"
    assert not any("想" in t or "think" in t.lower() or "weather" in t for t in texts)


# ---- TTS-ready text ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, spoken", [
    ("2024年3月5日，气温25.5℃，增长了30%", "二零二四年三月五日，气温二十五点五摄氏度，增长了百分之三十"),
    ("电话13812345678。", "电话幺三八幺二三四五六七八。"),
    ("下午3:30见，约5km。", "下午三点三十分见，约五公里。"),
    ("In 2024, growth was 30%.", "In twenty twenty four, growth was thirty percent."),
    ("没有数字的句子。", "没有数字的句子。"),
])
def test_sentences_are_given_to_the_tts_in_words(text, spoken):
    assert for_tts(text) == spoken


def test_the_seed_stream_carries_speech_beside_the_displayed_sentence():
    with FakeOpenAIServer(["今天气温25℃。增长了30%。"]) as fake:
        server = serve_router([ProviderConfig("w", "openai", "m", base_url=fake.base_url)])
        try:
            events = [d for _, d in sse_events(requests.post(server.url, stream=True, timeout=30, json={
                "prompt": "天气", "provider": "w", "stream": True, "max_seconds": 30}))]
            plain = requests.post(server.url, json={"prompt": "天气", "provider": "w", "max_seconds": 30},
                                  timeout=30).json()
        finally:
            server.stop()
    assert events[0] == {"sentence": "今天气温25℃。", "speech": "今天气温二十五摄氏度。"}
    assert events[1] == {"sentence": "增长了30%。", "speech": "增长了百分之三十。"}
    assert events[-1]["response"] == "今天气温25℃。增长了30%。"      # the display keeps its digits
    assert plain["sentences"] == events[:2]


# ---- emotion tags ----------------------------------------------------------------------------------

def test_emotion_tags_split_across_deltas_become_emotions_and_are_never_spoken():
    deltas = ["[jo", "y]今天天气真好！", "[sad", "]可惜", "下午要下雨。[bored]好吧。[joy 我们走吧。"]
    pieces = list(speak(iter(deltas), Budget(seconds=30), emotions=speech.DEFAULT_EMOTIONS))
    text = "".join(t for t, _ in pieces)
    assert text == "今天天气真好！可惜下午要下雨。好吧。我们走吧。"
    splitter = SentenceSplitter()
    tagged = [s for piece in pieces for s in splitter.feed_tagged(*piece)] + splitter.flush_tagged()
    assert tagged == [("今天天气真好！", "joy"), ("可惜下午要下雨。", "sad"), ("好吧。", "sad"),
                      ("我们走吧。", "sad")]      # unknown and malformed tags removed; the face stays


def test_emotion_tags_leave_ordinary_brackets_alone():
    tags = EmotionTags()
    assert tags.feed("see [1] and [") + tags.feed("x](y)") + tags.finish() == "see [1] and [x](y)"


def test_emotions_reach_the_seed_stream_and_the_model_is_asked_for_them():
    with FakeOpenAIServer(["[joy]太好了！[surprise]真的吗？"]) as fake:
        server = serve_router([ProviderConfig("e", "openai", "m", base_url=fake.base_url)])
        try:
            events = [d for _, d in sse_events(requests.post(server.url, stream=True, timeout=30, json={
                "prompt": "我中奖了", "provider": "e", "stream": True, "emotions": True}))]
            off = requests.post(server.url, json={"prompt": "我中奖了", "provider": "e"}, timeout=30).json()
        finally:
            server.stop()
        system = fake.requests[0]["messages"][0]["content"]
    assert "[neutral]" in system and "surprise" in system
    assert [(e["sentence"], e["emotion"]) for e in events[:2]] == [("太好了！", "joy"), ("真的吗？", "surprise")]
    assert "emotion" not in off["sentences"][0] and off["response"] == "太好了！真的吗？"


# ---- the scoreboard -------------------------------------------------------------------------------------

def test_the_scoreboard_scores_each_provider_against_the_fakes(tmp_path, capsys):
    markdown = "<think>先想想</think>## 建议\n1. **深呼吸**😀 看 https://x.cn\n2. 多运动。每天散步三十分钟，会让人放松很多。"
    with FakeOpenAIServer([markdown]) as tidy, FakeOpenAIServer(["ok then no punctuation at all"]) as flat:
        path = tmp_path / "configs.yaml"
        path.write_text("providers:\n"
                        f"  tidy: {{kind: openai, model: m, base_url: '{tidy.base_url}'}}\n"
                        f"  flat: {{kind: openai, model: m, base_url: '{flat.base_url}'}}\n")
        assert llm_cli(["--config", str(path), "scoreboard", "tidy", "flat"]) == 0
        asked = len(tidy.requests)
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert asked == 20 and rows["tidy"][1:5] == ["20", "100%", "100%", "0%"]
    assert rows["flat"][1:4] == ["20", "100%", "0%"]      # no sentence end: the board shows it
    assert llm_cli(["--config", str(path), "scoreboard", "nobody"]) == 2
