"""What makes the router an avatar's brain: short answers in a spoken-time budget, speech-clean text,
reasoning kept out, emotion tags, TTS-ready text and sentences split as the stream arrives. Every stage
is incremental and linear in the reply's length: text once released is never taken back.

    sentences   sentence and clause boundaries, SentenceSplitter
    clean       ReplyFilter (reasoning, control characters), Cleaner (markdown, emoji, URLs)
    budget      Budget (seconds or characters), instruction, SpeechFilter (the enforced cut)
    emotions    EmotionTags: [joy] tags -> Chunk.emotion
    normalize   for_tts: numbers, units and symbols in words
    stream      Speaker, speak, aspeak: one reply stream through all of the above"""

from .budget import (
    DEFAULT_MAX_SECONDS,
    EN_WORDS_PER_S,
    MAX_SECONDS,
    SECONDS_RULE,
    ZH_CHARS_PER_S,
    Budget,
    SpeechFilter,
    fit_to_budget,
    spoken_seconds,
    valid_seconds,
)
from .clean import ReplyFilter, clean_for_speech
from .emotions import DEFAULT_EMOTIONS, EmotionTags, resting_emotion
from .normalize import for_tts, sentence_event
from .sentences import CLAUSE_MARKS, SENTENCE_ENDS, SentenceSplitter, is_chinese
from .stream import Speaker, aspeak, speak


def instruction(prompt: str, max_chars: int) -> str:
    """The classic character-budget instruction (see `Budget.instruction` for seconds and emotions)."""
    return Budget(chars=max_chars).instruction(prompt)


__all__ = ["Budget", "CLAUSE_MARKS", "DEFAULT_EMOTIONS", "DEFAULT_MAX_SECONDS", "EN_WORDS_PER_S",
           "MAX_SECONDS", "SECONDS_RULE", "EmotionTags", "ReplyFilter", "SENTENCE_ENDS", "SentenceSplitter",
           "SpeechFilter", "ZH_CHARS_PER_S", "clean_for_speech", "fit_to_budget", "for_tts", "instruction",
           "is_chinese", "resting_emotion", "sentence_event", "speak", "aspeak", "Speaker", "spoken_seconds",
           "valid_seconds"]
