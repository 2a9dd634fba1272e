"""The speech stages of the avatar's brain: a model's reply as speakable, budgeted, emotion-tagged text."""

from .budget import (
    DEFAULT_MAX_SECONDS,
    MAX_SECONDS,
    SECONDS_RULE,
    Budget,
    SpeechFilter,
    fit_to_budget,
    spoken_seconds,
    valid_seconds,
)
from .clean import ReplyFilter, clean_for_speech
from .emotions import DEFAULT_EMOTIONS, EmotionTags, resting_emotion
from .normalize import for_tts, sentence_event
from .sentences import SENTENCE_ENDS, SentenceSplitter, is_chinese
from .stream import aspeak, speak

__all__ = ["Budget", "DEFAULT_EMOTIONS", "DEFAULT_MAX_SECONDS", "EmotionTags", "MAX_SECONDS", "ReplyFilter",
           "SECONDS_RULE", "SENTENCE_ENDS", "SentenceSplitter", "SpeechFilter", "aspeak", "clean_for_speech",
           "fit_to_budget", "for_tts", "is_chinese", "resting_emotion", "sentence_event", "speak",
           "spoken_seconds", "valid_seconds"]
