"""TTS-ready text: a sentence as a TTS engine should read it (the displayed reply keeps its digits).

"2024年3月5日，气温25.5℃，增长了30%" -> "二零二四年三月五日，气温二十五点五摄氏度，增长了百分之三十";
"In 2024, growth was 30%." -> "In twenty twenty four, growth was thirty percent."

wetext (the WeTextProcessing runtime that TTS projects use, Apache-2.0) does the work: its
Chinese grammar reads years and phone numbers digit by digit, and says dates, times, decimals,
percentages, ranges and units (℃, km, kg) in words; cn2an left "25.5" half-converted and read a
phone number as one big number. Measured here: importing it takes about 0.7 s and 44 MB, and a
sentence with numbers about 2-5 ms, so it is imported on the first sentence that needs it, and a
sentence with nothing to convert (most of them) returns at once.
"""

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


def for_tts(sentence: str) -> str:
    """`sentence` with numbers, units and symbols in words, in the sentence's own language.

    Never loses the sentence: if the normalizer is missing or fails, the text comes back as it was."""
    global _failed
    if _failed or not _NEEDS_WORDS.search(sentence):
        return sentence
    lang = "zh" if is_chinese(sentence) else "en"
    try:
        with _lock:
            normalizer = _normalizers.get(lang)
            if normalizer is None:
                from wetext import Normalizer

                normalizer = _normalizers[lang] = Normalizer(lang=lang, operator="tn")
            spoken = normalizer.normalize(sentence)
    except ImportError:
        _failed = True
        log.warning("wetext is not installed: sentences reach the TTS with their digits "
                    "(pip install wetext)")
        return sentence
    except Exception:  # noqa: BLE001 - a grammar failure must not cost the avatar its sentence
        log.exception("text normalisation failed for %r", sentence[:40])
        return sentence
    return spoken.strip() or sentence


async def sentence_event(sentence: str, emotion: str | None = None) -> dict:
    """A sentence as the seed stream and the page deliver it: `sentence` (as displayed), `speech`
    (as a TTS engine should read it; normalised off the event loop) and `emotion`."""
    return {"sentence": sentence, "speech": await asyncio.to_thread(for_tts, sentence), "emotion": emotion}
