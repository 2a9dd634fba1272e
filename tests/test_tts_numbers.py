"""English numbers in the TTS-ready text (issue 17, row 9): thousands separators, decimals, money
and 21-99 compounds read as English writes them; years, times, ordinals, ranges, phone numbers
and every Chinese sentence stay as wetext reads them."""

import sys

import pytest

from llm.speech import for_tts
from llm.speech import normalize as normalize_module


@pytest.mark.parametrize("text, spoken", [
    # wetext alone read these wrongly
    ("It is a 2,500-foot wall.", "It is a two thousand five hundred-foot wall."),
    ("It runs 1,200 meters.", "It runs one thousand two hundred meters."),
    ("The score was 77.0 today.", "The score was seventy-seven point zero today."),
    ("version 3.0", "version three point zero"),
    ("It costs $5.99.", "It costs five dollars and ninety-nine cents."),
    ("77", "seventy-seven"),
    ("It costs $1,200.", "It costs one thousand two hundred dollars."),
    ("Tea is £3.50 and cake €12.", "Tea is three pounds and fifty pence and cake twelve euros."),
    ("Only $0.99, or $1.01 with tax.", "Only ninety-nine cents, or one dollar and one cent with tax."),
    ("A fee of £0.01.", "A fee of one penny."),
    ("It cost $2.5 million.", "It cost two point five million dollars."),
    ("Population 1,234,567.5 here.",
     "Population one million two hundred thirty-four thousand five hundred and sixty-seven point five here."),
    ("1,999 people came.", "one thousand nine hundred and ninety-nine people came."),
    ("A 1,200-page book.", "A one thousand two hundred-page book."),
    ("It is 5,000m high, 1,200 km away.", "It is five thousand meters high, one thousand two hundred kilometers away."),
    ("Between 2,500-3,000 feet.", "Between two thousand five hundred to three thousand feet."),
    ("Up 1,200% since then.", "Up one thousand two hundred percent since then."),
    ("It fell to -1,200 today.", "It fell to minus one thousand two hundred today."),
    ("1,000,000 and 12,001.", "one million and twelve thousand and one."),
    ("It was 7.05 and 10.50.", "It was seven point zero five and ten point five zero."),
    ("He is 45 and has 121 dogs.", "He is forty-five and has one hundred and twenty-one dogs."),
    ("It is 21 km.", "It is twenty-one kilometers."),
    ("Growth was 25.5%.", "Growth was twenty-five point five percent."),
    ("Pages 21-22.", "Pages twenty-one to twenty-two."),
    # wetext read these well, and still does
    ("In 2024, growth was 30%.", "In twenty twenty four, growth was thirty percent."),
    ("From 1990 to 2000.", "From nineteen ninety to two thousand."),
    ("Pi is 3.14.", "Pi is three point one four."),
    ("1st and 22nd", "first and twenty-second"),
    ("at 3:30 pm", "at three thirty PM"),
    ("at 12:45", "at twelve forty five"),
    ("About 21,196 km long.", "About twenty-one thousand one hundred and ninety-six kilometers long."),
    ("Pages 10-20.", "Pages ten to twenty."),
    ("Call 555-123-4567.", "Call five five five, one two three, four five six seven."),
    ("It is 25°C.", "It is twenty-five degrees Celsius."),
    ("It costs $5.", "It costs five dollars."),
    ("No numbers here.", "No numbers here."),
])
def test_english_numbers_are_read_as_english_writes_them(text, spoken):
    assert for_tts(text) == spoken


@pytest.mark.parametrize("text", [
    "价格是$5.99，共1,200人，得分77.0。",
    "2024年3月5日，气温25.5℃，增长了30%",
    "电话13812345678，约21公里。",
])
def test_chinese_sentences_go_to_wetext_untouched(text):
    from wetext import Normalizer

    assert for_tts(text) == Normalizer(lang="zh", operator="tn").normalize(text).strip()


def test_a_failing_normalizer_gives_the_sentence_back_as_it_was(monkeypatch):
    class Broken:
        def normalize(self, text):
            raise RuntimeError("grammar failure")

    monkeypatch.setitem(normalize_module._normalizers, "en", Broken())
    assert for_tts("It costs $5.99 for 1,200 of them in 2024.") == "It costs $5.99 for 1,200 of them in 2024."


def test_without_wetext_the_sentence_comes_back_as_it_was(monkeypatch):
    monkeypatch.setattr(normalize_module, "_normalizers", {})
    monkeypatch.setattr(normalize_module, "_failed", False)
    monkeypatch.setitem(sys.modules, "wetext", None)          # makes `from wetext import ...` fail
    assert for_tts("It costs $5.99 for 1,200 of them in 2024.") == "It costs $5.99 for 1,200 of them in 2024."
