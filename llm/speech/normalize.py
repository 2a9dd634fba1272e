"""TTS-ready text: a sentence with its numbers, units and symbols in words (the displayed reply keeps digits).

wetext (WeTextProcessing's runtime, Apache-2.0; cn2an left "25.5" half-converted) does the work. Importing
it takes about 0.7 s and 44 MB, a sentence 2-5 ms: it is imported on the first sentence that needs it.
Its English grammar misreads "1,200 meters", "77.0" ("point oh") and "$5.99", so in English money and
numbers with thousands separators are put in words here first, and its output gets "zero" after "point"
and hyphens in 21-99."""

from __future__ import annotations

import asyncio
import logging
import re
import threading

from .sentences import is_chinese

log = logging.getLogger(__name__)
_NEEDS_WORDS = re.compile(r"[0-9０-９%％℃°~～+＋=×÷/$¥€£]|\b(?:km|kg|cm|mm|ml|mph)\b")
_lock = threading.Lock()         # the FST runtime is not documented as thread-safe
_normalizers: dict[str, object] = {}
_failed = False

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", " thousand", " million", " billion", " trillion")
_MONEY_NAMES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
                "€": ("euro", "euros", "cent", "cents")}
# The units after a number put in words here, as wetext names them (it expands a unit only after
# digits); a unit missing here stays as written. "m" is meters, where wetext says "minutes".
_UNITS = {"km": "kilometers", "m": "meters", "cm": "centimeters", "mm": "millimeters", "mi": "miles",
          "ft": "feet", "sq ft": "square feet", "yd": "yards", "kg": "kilograms", "g": "grams",
          "mg": "milligrams", "lb": "pounds", "lbs": "pounds", "oz": "ounces", "ml": "milliliters",
          "mL": "milliliters", "mph": "miles per hour", "km/h": "kilometers per hour",
          "m/s": "meters per second", "rpm": "revolutions per minute", "kcal": "kilo calories",
          "ms": "milliseconds", "min": "minutes", "Hz": "hertz", "MHz": "megahertz", "GHz": "gigahertz",
          "KB": "kilobytes", "MB": "megabytes", "GB": "gigabytes", "TB": "terabytes", "%": "percent",
          "°C": "degrees Celsius", "°F": "degrees Fahrenheit", "℃": "degrees Celsius", "°": "degrees"}
_SIGNS = {"-": "minus ", "~": "approximately "}

# A letter before the symbol (US$5) or after the amount ($3.5M, $5k) is left to wetext, which
# names them; a scale word keeps the amount whole ("$2.5 million").
_MONEY = re.compile(r"(?<![A-Za-z])([$£€])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![.,]?\d|[A-Za-z])"
                    r"(?: (thousand|million|billion|trillion)\b)?")
# A number with thousands separators, alone or in a range, with its sign and unit. One without a
# separator is left to wetext, and so is one with letters after it ("1,000th", "1,200kWh").
_NUMBER = r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\d)|\d+(?:\.\d+)?)"
_UNIT = "|".join(sorted(map(re.escape, _UNITS), key=len, reverse=True))
_SEPARATED = re.compile(rf"(?<![\w.,~-])([-~])?{_NUMBER}(?:[-–~]{_NUMBER})?(?:\s?({_UNIT}))?(?![A-Za-z])")
# wetext says "oh" for a 0 after the point ("three point oh"); written English says "zero".
_POINT_DIGITS = re.compile(r"\bpoint(?: (?:%s))+\b" % "|".join(["oh"] + _ONES[:10]))
# "twenty four" right after another number word is part of a year or a time ("twenty twenty four",
# "three forty five"): left as wetext says it, as a TTS reads it the same either way.
_COMPOUND = re.compile(r"\b(?:(%s) )?(%s) (%s)\b" % (
    "|".join(_ONES[1:] + _TENS[2:]), "|".join(_TENS[2:]),
    "|".join(_ONES[1:10]) + "|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth"))


def _cardinal(n: int) -> str:
    """British-style like wetext's: "and" only before the last part under a hundred."""
    if n >= 1000 ** len(_SCALES):
        return " ".join(_ONES[int(d)] for d in str(n))
    groups = [int(g) for g in reversed(f"{n:,}".split(","))]
    words = []
    for scale in reversed(range(len(groups))):
        hundreds, rest = divmod(groups[scale], 100)
        part = [f"{_ONES[hundreds]} hundred"] if hundreds else []
        if rest:
            part += ["and"] if scale == 0 and (hundreds or len(groups) > 1) else []
            tens, ones = divmod(rest, 10)
            part.append(_ONES[rest] if rest < 20 else _TENS[tens] + (f"-{_ONES[ones]}" if ones else ""))
        if part:
            words.append(" ".join(part) + _SCALES[scale])
    return " ".join(words) or "zero"


def _number(text: str) -> str:
    whole, _, fraction = text.replace(",", "").partition(".")
    spoken = _cardinal(int(whole))
    return f"{spoken} point {' '.join(_ONES[int(d)] for d in fraction)}" if fraction else spoken


def _money(m: re.Match) -> str:
    one, many, cent, cents = _MONEY_NAMES[m[1]]
    if m[4] or (m[3] and len(m[3]) != 2):       # "$2.5 million" is an amount, not dollars and cents
        return " ".join(filter(None, (_number(m[2] + (f".{m[3]}" if m[3] else "")), m[4], many)))
    whole, part = int(m[2].replace(",", "")), int(m[3] or 0)
    spoken = [f"{_cardinal(whole)} {one if whole == 1 else many}"] if whole or not part else []
    spoken += [f"{_cardinal(part)} {cent if part == 1 else cents}"] if part else []
    return " and ".join(spoken)


def _separated(m: re.Match) -> str:
    if "," not in m[2] + (m[3] or ""):
        return m[0]                              # no separator: wetext reads it well
    spoken = _SIGNS.get(m[1] or "", "") + _number(m[2]) + (f" to {_number(m[3])}" if m[3] else "")
    return f"{spoken} {_UNITS[m[4]]}" if m[4] else spoken


def for_tts(sentence: str) -> str:
    """`sentence` in words, in its own language; as it was if the normalizer is missing or fails."""
    global _failed
    if _failed or not _NEEDS_WORDS.search(sentence):
        return sentence
    lang = "zh" if is_chinese(sentence) else "en"
    try:
        text = _SEPARATED.sub(_separated, _MONEY.sub(_money, sentence)) if lang == "en" else sentence
        with _lock:
            if (normalizer := _normalizers.get(lang)) is None:
                from wetext import Normalizer
                normalizer = _normalizers[lang] = Normalizer(lang=lang, operator="tn")
            spoken = normalizer.normalize(text) if _NEEDS_WORDS.search(text) else text
        if lang == "en":
            spoken = _POINT_DIGITS.sub(lambda m: m[0].replace(" oh", " zero"), spoken)
            spoken = _COMPOUND.sub(lambda m: m[0] if m[1] else f"{m[2]}-{m[3]}", spoken)
    except ImportError:
        _failed = True
        log.warning("wetext is not installed: sentences reach the TTS with their digits (pip install wetext)")
        return sentence
    except Exception:  # noqa: BLE001 - a grammar failure must not cost the avatar its sentence
        log.exception("text normalisation failed for %r", sentence[:40])
        return sentence
    return spoken.strip() or sentence


async def sentence_event(sentence: str, emotion: str | None = None) -> dict:
    """A sentence as the seed stream and the page deliver it, `speech` normalised off the event loop."""
    return {"sentence": sentence, "speech": await asyncio.to_thread(for_tts, sentence), "emotion": emotion}
