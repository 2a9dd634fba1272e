"""The speech stages of the avatar's brain: a model's reply as speakable, budgeted, emotion-tagged text."""

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
