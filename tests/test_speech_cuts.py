"""Issue 17: a reply cut to the budget ends like a sentence, also when its first sentence alone is
longer than the budget (it may then run to 1.5x the budget); never mid-phrase, never with trailing
white space. Unit-level (SpeechFilter, fit_to_budget, Speaker) and through the HTTP API."""

from __future__ import annotations

import re
from contextlib import ExitStack

import pytest
import requests

from configs import ProviderConfig
from llm.speech import Budget, SpeechFilter, fit_to_budget, speak, spoken_seconds
from llm.speech.budget import FIRST_SENTENCE_OVERRUN
from llm.types import StreamEvent
from tests.api_helpers import serve_router, sse_events
from tests.fake_servers import FakeOpenAIServer

# The default budget, 5 s, is 12 English words or 25 Chinese characters; 1.5x is 18 words, 37 characters.
EN_WHOLE = ("The Great Wall is a series of old walls that stretch for thousands of miles across China. "
            "It took many centuries to build.")                                      # 17 words, then more
EN_CLAUSE = ("The Great Wall was built over many centuries by several dynasties of China, and it stretches "
             "across the northern mountains for thousands of miles.")                # comma after 13 of 25
EN_BARE = ("The Great Wall was a series of major walls built across northern China over many centuries by "
           "several dynasties and empires of the past")                              # no punctuation at all
EN_NORMAL = "Deep breathing helps. Exercise regularly, sleep well, and talk to friends about what worries you."
ZH_WHOLE = "长城是中国古代修建的军事防御工程总长度超过两万一千公里横跨北方十五个省份。它非常壮观。"   # 36 + 。
ZH_CLAUSE = "长城是中国古代修建的军事防御工程总长度超过两万一千公里，横跨北方十五个省份和自治区并且历经多个朝代的不断修建。"
ZH_BARE = "长城是中国古代修建的军事防御工程总长度超过两万一千公里横跨北方十五个省份和自治区并且历经多个朝代"
ZH_NORMAL = "今天天气很好，我们一起去公园散步吧。然后去吃饭，吃完饭再回家休息一下好不好？"

CASES = [   # (reply, lang, what the client must get)
    (EN_WHOLE, "en", EN_WHOLE.split(". ")[0] + "."),                                            # (a)
    (EN_CLAUSE, "en", EN_CLAUSE.split(",")[0] + "."),                                           # (b)
    (EN_BARE, "en", EN_BARE.split(" by ")[0] + "."),                                            # (c)
    (EN_NORMAL, "en", "Deep breathing helps."),                                                 # (d)
    (ZH_WHOLE, "zh", ZH_WHOLE.split("。")[0] + "。"),                                            # (a)
    (ZH_CLAUSE, "zh", ZH_CLAUSE.split("，")[0] + "。"),                                          # (b)
    (ZH_BARE, "zh", ZH_BARE[:25] + "。"),                                                        # (c)
    (ZH_NORMAL, "zh", "今天天气很好，我们一起去公园散步吧。"),                                      # (d)
]
IDS = ["en-whole", "en-clause", "en-bare", "en-normal", "zh-whole", "zh-clause", "zh-bare", "zh-normal"]
ALLOWANCE = 5 * FIRST_SENTENCE_OVERRUN


def in_one_piece(text: str) -> list[str]:
    return [text]


def by_character(text: str) -> list[str]:
    return list(text)


def by_word(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text) if " " in text else [text[i:i + 2] for i in range(0, len(text), 2)]


DELTAS = [in_one_piece, by_character, by_word]


def through_filter(deltas: list[str], budget: Budget, lang: str) -> tuple[str, int]:
    """The released text, and how many deltas were read before `done` stopped the upstream."""
    f, out = SpeechFilter(budget, lang=lang), []
    for read, delta in enumerate(deltas, 1):
        out.append(f.feed(delta))
        if f.done:
            return "".join(out), read
    return "".join(out) + f.finish(), len(deltas)


def through_speaker(deltas: list[str], budget: Budget, lang: str) -> tuple[str, str | None]:
    text, finish = [], None
    for piece, _ in speak(iter(deltas), budget, lang=lang):
        if isinstance(piece, StreamEvent):
            finish = piece.finish_reason or finish
        else:
            text.append(piece)
    return "".join(text), finish


def assert_ends_like_a_sentence(out: str) -> None:
    assert out and out == out.strip() and out[-1] in ".!?。！？", repr(out)


# ---- unit level --------------------------------------------------------------------------------

def test_the_overrun_is_a_named_bounded_constant():
    assert FIRST_SENTENCE_OVERRUN == 1.5


@pytest.mark.parametrize("reply, lang, expected", CASES, ids=IDS)
@pytest.mark.parametrize("split", DELTAS)
def test_a_cut_reply_ends_like_a_sentence_however_it_arrives(reply, lang, expected, split):
    out, _ = through_filter(split(reply), Budget(), lang)
    assert out == expected
    assert_ends_like_a_sentence(out)
    assert spoken_seconds(out) <= ALLOWANCE
    assert fit_to_budget(reply) == expected
    assert through_speaker(split(reply), Budget(), lang) == (expected, "length")


@pytest.mark.parametrize("reply, lang", [(EN_WHOLE, "en"), (ZH_WHOLE, "zh")], ids=["en", "zh"])
def test_a_first_sentence_within_the_allowance_is_not_cut_and_stops_the_stream_at_its_end(reply, lang):
    first = reply[:max(reply.find(". "), reply.find("。")) + 1]
    assert 5 < spoken_seconds(first) <= ALLOWANCE          # longer than the budget, within 1.5x
    out, read = through_filter(by_character(reply), Budget(), lang)
    assert out == first
    assert read <= len(first) + 2      # "." waits for the next character, and a space for the one after


@pytest.mark.parametrize("reply, lang, _", CASES, ids=IDS)
def test_the_stream_stops_no_later_than_one_and_a_half_budgets(reply, lang, _):
    for split in DELTAS[1:]:
        deltas = split(reply)
        _, read = through_filter(deltas, Budget(), lang)
        assert spoken_seconds("".join(deltas[:read - 1])) <= ALLOWANCE      # all but the last delta read


@pytest.mark.parametrize("split", DELTAS)
def test_a_bare_english_cut_falls_before_a_phrase_and_never_inside_a_word(split):
    out, _ = through_filter(split(EN_BARE), Budget(), "en")
    head = out[:-1]
    assert out.endswith(".") and not head.endswith(" ")
    rest = EN_BARE[len(head):].split()
    assert EN_BARE.startswith(head) and EN_BARE[len(head)] == " "     # a whole-word prefix
    assert rest[0] in {"by", "of", "across", "over", "and"}           # the next word starts a phrase
    assert 5 / 2 <= spoken_seconds(head) <= ALLOWANCE                  # and the reply is not a stub


@pytest.mark.parametrize("budget, reply, expected", [
    (Budget(chars=25), "Photosynthesis converts sunlight into chemical energy", "Photosynthesis converts sunlight."),
    (Budget(chars=25), EN_CLAUSE, "The Great Wall was built."),              # the first phrase boundary
    (Budget(chars=25), ZH_WHOLE, ZH_WHOLE.split("。")[0] + "。"),             # 37 characters: within 1.5x
    (Budget(chars=25), ZH_CLAUSE, ZH_CLAUSE.split("，")[0] + "。"),
    (Budget(chars=25), ZH_BARE, ZH_BARE[:25] + "。"),
    (Budget(seconds=2), "word " * 40, "word word word word word."),          # no phrase word: whole words
], ids=["en-phrase", "en-early-phrase", "zh-whole", "zh-clause", "zh-bare", "en-no-phrase-word"])
@pytest.mark.parametrize("split", DELTAS)
def test_character_budgets_follow_the_same_rule(budget, reply, expected, split):
    lang = "en" if reply.isascii() else "zh"
    out, _ = through_filter(split(reply), budget, lang)
    assert out == expected
    if budget.chars:
        assert len(out) <= budget.chars * FIRST_SENTENCE_OVERRUN + 1
        assert fit_to_budget(reply, budget.chars) == expected


@pytest.mark.parametrize("reply", ["The Great Wall was a series of 211 major walls built across northern China "
                                   "over many centuries by several dynasties",
                                   "Some words here   ", "Yes, and   \n", "The wall is long.   ", "   "],
                         ids=["digits", "trailing-spaces", "clause-newline", "sentence-spaces", "blank"])
@pytest.mark.parametrize("split", DELTAS)
def test_no_reply_ends_in_white_space(reply, split):
    for budget in (Budget(), Budget(seconds=1), Budget(chars=10)):
        out, _ = through_filter(split(reply), budget, "en")
        assert out == out.rstrip()
        assert fit_to_budget(reply, budget.chars, max_seconds=budget.seconds) == out


def test_a_stream_that_ends_within_the_allowance_keeps_its_whole_first_sentence():
    reply = "The Great Wall is a series of old walls that stretch for thousands of miles"   # 15 words, no end
    assert through_filter(by_character(reply), Budget(), "en") == (reply, len(reply))
    assert fit_to_budget(reply) == reply


@pytest.mark.parametrize("split", DELTAS)
def test_a_clause_mark_within_the_budget_beats_one_in_the_allowance(split):
    reply = ("The wall is long, and it was built over many centuries by several dynasties of China, "
             "mostly to keep out raiders from the northern steppes.")      # commas after 4 and 17 words
    assert through_filter(split(reply), Budget(), "en")[0] == "The wall is long."
    assert through_speaker(split(reply), Budget(), "en") == ("The wall is long.", "length")


def test_released_text_is_never_taken_back_when_the_first_sentence_runs_over():
    f, released = SpeechFilter(Budget(), lang="en"), ""
    for ch in EN_CLAUSE:
        piece = f.feed(ch)
        assert (released + piece).startswith(released)
        released += piece
        if f.done:
            break
    assert released == EN_CLAUSE.split(",")[0] + "."


# ---- through the HTTP API ----------------------------------------------------------------------

HTTP_CASES = [(EN_BARE, "Tell me about the Great Wall."), (EN_WHOLE, "Tell me about the Great Wall."),
              (ZH_CLAUSE, "介绍一下长城"), (ZH_BARE, "介绍一下长城")]


@pytest.fixture(scope="module")
def served():
    with ExitStack() as stack:
        fakes = [stack.enter_context(FakeOpenAIServer([reply])) for reply, _ in HTTP_CASES]
        server = serve_router([ProviderConfig(f"long{i}", "openai", "m", base_url=fake.base_url)
                               for i, fake in enumerate(fakes)])
        yield server
        server.stop()


def expected_for(reply: str) -> str:
    return next(expected for text, _, expected in CASES if text == reply)


@pytest.mark.parametrize("case", range(len(HTTP_CASES)))
@pytest.mark.parametrize("stream", [False, True])
def test_openai_route_replies_end_like_a_sentence(served, case, stream):
    reply, prompt = HTTP_CASES[case]
    body = {"model": f"long{case}", "stream": stream, "messages": [{"role": "user", "content": prompt}]}
    response = requests.post(f"{served.url}/v1/chat/completions", json=body, stream=stream, timeout=30)
    assert response.status_code == 200, response.text
    if stream:
        chunks = [data for _, data in sse_events(response) if data != "[DONE]"]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1]
    else:
        choice = response.json()["choices"][0]
        text, finish = choice["message"]["content"], choice["finish_reason"]
    assert text == expected_for(reply) and finish == "length"
    assert_ends_like_a_sentence(text)


@pytest.mark.parametrize("case", range(len(HTTP_CASES)))
@pytest.mark.parametrize("stream", [False, True])
def test_seed_route_replies_and_sentences_end_like_a_sentence(served, case, stream):
    reply, prompt = HTTP_CASES[case]
    response = requests.post(served.url, json={"prompt": prompt, "provider": f"long{case}", "stream": stream},
                             stream=stream, timeout=30)
    assert response.status_code == 200, response.text
    if stream:
        events = [data for _, data in sse_events(response)]
        sentences = [e["sentence"] for e in events if "sentence" in e]
        assert sentences == [expected_for(reply)]
        text = events[-1]["response"]
    else:
        text = response.json()["response"]
    assert text == expected_for(reply)
    assert_ends_like_a_sentence(text)
