"""Speech style: instruction language, speech-clean text, the character budget, sentence splitting."""

import pytest

from llm.speech import (
    Budget,
    SentenceSplitter,
    SpeechFilter,
    clean_for_speech,
    fit_to_budget,
    is_chinese,
)

MARKDOWN_ZH = ("## 缓解压力的方法\n\n1. **深呼吸**：放松身体\n- 多运动 [详情](https://example.com/x)\n"
               "```python\nprint('code')\n```\n| 方法 | 效果 |\n|---|---|\n| 睡觉 | 好 |\n祝你开心😀！")


def stream_through(f: SpeechFilter, text: str, step: int = 1) -> list[str]:
    parts = []
    for i in range(0, len(text), step):
        parts.append(f.feed(text[i:i + step]))
        if f.done:
            break
    parts.append(f.finish())
    return [p for p in parts if p]


def test_instruction_follows_the_prompt_language():
    assert Budget(chars=25).instruction("如何应对压力") == "请用少于25个字回答以下问题"
    en = Budget(chars=40).instruction("How do I handle stress?")
    assert "40 characters" in en and "请" not in en
    assert is_chinese("什么是AI") and not is_chinese("What does 你 mean in this sentence")


def test_markdown_emoji_urls_and_code_are_removed():
    out = clean_for_speech(MARKDOWN_ZH)
    for junk in ("#", "*", "`", "|", "---", "http", "print", "😀", "[", "]("):
        assert junk not in out, (junk, out)
    for kept in ("缓解压力的方法", "深呼吸", "放松身体", "多运动", "详情", "睡觉", "祝你开心！"):
        assert kept in out, (kept, out)
    assert "  " not in out and "\n" not in out


def test_english_markdown_keeps_link_text_and_spacing():
    out = clean_for_speech("**Tip:** see [the docs](http://a.b/c) or www.example.com now.\n\n- one\n- two")
    assert out == "Tip: see the docs or now. one, two"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_streamed_cleaning_equals_whole_text_cleaning(step):
    f = SpeechFilter(None)
    assert "".join(stream_through(f, MARKDOWN_ZH, step)) == clean_for_speech(MARKDOWN_ZH)


def test_partial_link_or_url_is_never_released_half_done():
    f = SpeechFilter(None)
    released = [f.feed(c) for c in "看[这里](https://x.cn/a)吧"]
    assert "".join(released) + f.finish() == "看这里吧"
    assert not any("h" in r or "[" in r for r in released)


@pytest.mark.parametrize("text,expected", [
    ("今天天气很好，我们一起去公园散步吧。然后去吃饭，吃完饭再回家休息一下好不好？", "今天天气很好，我们一起去公园散步吧。"),
    ("压力大的时候可以深呼吸，适当运动，和朋友聊天，保证充足睡眠，这些都很有帮助的方法", "压力大的时候可以深呼吸，适当运动，和朋友聊天。"),
    ("一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十", "一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十"),
    ("一二三四五六七八九十" * 4, "一二三四五六七八九十一二三四五六七八九十一二三四五。"),   # past 1.5x: cut at the budget
    ("短句。", "短句。"),
    ("Deep breathing helps. Exercise regularly, sleep well, and talk to friends.", "Deep breathing helps."),
])
def test_budget_cuts_at_sentence_then_clause_then_hard(text, expected):
    assert fit_to_budget(text, 25) == expected
    streamed = "".join(stream_through(SpeechFilter(25), text))
    assert streamed == expected and len(streamed) <= 25 * 1.5     # a first sentence may run to 1.5x


def test_budget_stops_consuming_as_soon_as_it_is_exceeded():
    f = SpeechFilter(10)
    fed = 0
    for ch in "这是一个非常非常长的回答" * 50:
        f.feed(ch)
        fed += 1
        if f.done:
            break
    assert f.done and fed == 16         # a first sentence may run to 1.5x the budget, no further


def test_released_text_is_never_taken_back():
    f = SpeechFilter(12)
    parts = stream_through(f, "好的，没问题，我来帮你，马上就好了谢谢你")
    assert "".join(parts) == "好的，没问题，我来帮你。"
    assert parts[0] == "好的" and all(len("".join(parts)) <= 12 for _ in parts)


def test_hard_cut_does_not_split_an_english_word():
    out = fit_to_budget("Photosynthesis converts sunlight into chemical energy", 25)
    assert out == "Photosynthesis converts sunlight." and len(out) <= 25 * 1.5    # before a phrase


def test_sentence_splitter_streams_chinese_and_english():
    s = SentenceSplitter()
    got = []
    for ch in "你好！今天是3.14号。Dr. Smith paid $3.50 today! Really?\n第二行":
        got += s.feed(ch)
    assert got == ["你好！", "今天是3.14号。", "Dr. Smith paid $3.50 today!", "Really?"]
    assert s.flush() == ["第二行"]


def test_sentence_splitter_yields_each_sentence_as_soon_as_it_is_complete():
    s = SentenceSplitter()
    assert s.feed("第一句。第二") == ["第一句。"]
    assert s.feed("句！") == ["第二句！"]     # at once: no wait for the next character
    assert s.feed("”好") == []              # a closing quote after it is dropped, not spoken alone
    assert s.feed("的。”") == ["好的。”"]    # one that came with its sentence stays
    assert s.flush() == []
    assert s.feed("Is it 3.") == []         # only "." waits: 3.14 or the end of a sentence?
    assert s.feed("14? Yes") == ["Is it 3.14?"]


def test_sentence_splitter_keeps_abbreviations_and_numbers():
    s = SentenceSplitter()
    out = s.feed("I met Mr. J. K. Rowling e.g. at 10.5 km. Then left. ") + s.flush()
    assert out == ["I met Mr. J. K. Rowling e.g. at 10.5 km.", "Then left."]


def test_cleaning_is_linear_on_a_long_line():
    # a long Chinese line with no newline, fed token by token: the pending buffer must stay small
    f = SpeechFilter(None)
    for _ in range(20000):
        f.feed("很")
        assert len(f._cleaner.pending) <= 1
