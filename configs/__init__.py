"""Typed settings: built-in presets, then an optional YAML file, then environment variables.

API keys never live in the file: a provider names the environment variable that holds its key.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from llm.errors import ConfigError
from llm.providers import KINDS
from llm.speech import DEFAULT_EMOTIONS, DEFAULT_MAX_SECONDS, SECONDS_RULE, valid_seconds

from .check import Where, expect, is_number
from .state import KnowledgeConfig, SessionsConfig, knowledge_from, sessions_from, store_url

log = logging.getLogger(__name__)

DEFAULT_CONFIG_FILE = "configs.yaml"
MAX_RETRIES = 10
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop", "seed",
                   "frequency_penalty", "presence_penalty")

# A GGUF file's quantization as repos name their files (Q4_K_M, q8_0, IQ4_XS, f16...): picks one by glob.
GGUF_QUANTIZATION = re.compile(r"^(?:i?q\d\w*|tq\d\w*|b?f16|f32|mxfp4\w*)$", re.IGNORECASE)

# The upstream Linly-AI (Chinese-LLaMA-2) prompt format; {history} holds earlier "User: ... Bot: ..." turns.
LINLY_TEMPLATE = "{system}{history} ### Instruction:{prompt}  ### Response:"


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    model: str = ""
    label: str = ""                       # shown in the dropdown; defaults to the name
    base_url: str | None = None
    # openai kind: several servers of one model (replicas); base_url is then the first of them
    base_urls: tuple[str, ...] = ()
    api_key_env: tuple[str, ...] = ()     # env vars tried in order; the first that is set wins
    timeout: float | None = None          # seconds; None = the backend's default
    fallback: tuple[str, ...] = ()
    trust_remote_code: bool = False
    prompt_template: str | None = None    # for base models without a chat template
    device: str = "auto"                  # auto | cuda | cpu | cuda:N
    dtype: str = "auto"                   # auto | bfloat16 | float16 | float32
    quantization: str | None = None       # local: 8bit | 4bit (bitsandbytes); gguf: the file, e.g. q4_k_m
    engine: str = "auto"                  # local: auto (batched on CUDA) | batched | generate
    generation: Mapping[str, Any] = field(default_factory=dict)   # default sampling params
    context_window: int | None = None     # tokens; None = the model's own (local) or 8192
    style_mode: str | None = None         # how the speech style is given: system | prefix
    max_concurrency: int | None = None    # parallel generations; local: 1 (generate) or 16 (batched)
    download: str | None = None           # hub id for `python -m llm download`, when model is a path
    # Reliability (llm/policy/); None = the kind's default, 0 = off. Seconds unless said otherwise.
    retries: int | None = None            # tries after a transient failure before any text (cloud: 2)
    cooldown: float | None = None         # skip the provider this long after it fails (30)
    first_token_timeout: float | None = None  # no text by then: 504, fallback (cloud: 20)
    stall_timeout: float | None = None    # silence mid-reply longer than this: 504 (cloud: 15)
    hedge_after: float | None = None      # no text by then: start the first fallback beside it
    aliases: tuple[str, ...] = ()         # other model names that reach it (a client fixed on "gpt-4o-mini")
    stream_usage: bool = True             # openai kind: ask for token usage (off for servers that refuse it)

    @property
    def display_name(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class StyleConfig:
    short_answer: bool = True
    max_seconds: float = DEFAULT_MAX_SECONDS    # the answer budget in seconds of speech (25 Chinese chars)
    max_chars: int | None = None                # an explicit character budget instead of seconds
    emotions: bool = False                      # ask for an emotion tag per sentence
    emotion_set: tuple[str, ...] = DEFAULT_EMOTIONS


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7860             # the Gradio UI
    api_port: int = 7871         # the FastAPI server
    max_body_bytes: int = 1_000_000


@dataclass(frozen=True)
class Settings:
    default: str = "direct"
    style: StyleConfig = field(default_factory=StyleConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    # Where state shared by API processes lives: None = embedded (files beside the data), or a
    # postgresql:// URL (the knowledge's documents and uploads, for several processes).
    store: str | None = None
    source: str = "built-in presets"   # where these settings came from, for error messages

    def provider(self, name: str) -> ProviderConfig:
        return self.providers[name]


def has_cuda() -> bool:
    """Whether this machine has an NVIDIA GPU, read without importing torch (the driver's files)."""
    return Path("/proc/driver/nvidia/version").exists() or any(
        (Path(d) / "nvidia-smi").exists() for d in os.environ.get("PATH", "").split(os.pathsep) if d)


PRESETS: dict[str, ProviderConfig] = {p.name: p for p in (
    ProviderConfig("direct", "echo", label="Direct Reply"),
    ProviderConfig(
        "linly", "local", "Linly-AI/Chinese-LLaMA-2-7B-hf", label="Linly Chinese-LLaMA-2-7B",
        prompt_template=LINLY_TEMPLATE, style_mode="prefix",
        generation={"top_k": 20, "top_p": 0.84, "temperature": 1.0, "repetition_penalty": 1.15},
    ),
    ProviderConfig("qwen", "local", "Qwen/Qwen1.5-1.8B-Chat", label="Qwen1.5 1.8B Chat"),
    # The quickest way to a real model without keys: with CUDA the transformers model (about 1 GB);
    # without, its 4-bit GGUF run by llama.cpp in-process (about 0.5 GB; 4x faster than fp32 on a CPU).
    ProviderConfig("qwen-mini", "local", "Qwen/Qwen2.5-0.5B-Instruct", label="Qwen2.5 0.5B Instruct (small)")
    if has_cuda() else
    ProviderConfig("qwen-mini", "gguf", "Qwen/Qwen2.5-0.5B-Instruct-GGUF", quantization="q4_k_m",
                   label="Qwen2.5 0.5B Instruct (small)"),
    ProviderConfig("chatglm", "local", "THUDM/glm-4-9b-chat-hf", label="GLM-4 9B Chat"),
    ProviderConfig("chatgpt", "openai", "gpt-4.1-mini", label="OpenAI ChatGPT",
                   api_key_env=("OPENAI_API_KEY",), timeout=60),
    ProviderConfig("gemini", "gemini", "gemini-2.5-flash", label="Google Gemini",
                   api_key_env=("GEMINI_API_KEY", "GOOGLE_API_KEY"), timeout=60),
    ProviderConfig("glm", "zhipuai", "glm-4-flash", label="ZhipuAI GLM",
                   api_key_env=("ZHIPUAI_API_KEY",), timeout=60),
)}


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Presets, then the YAML file (`path`, $LLM_CONFIG, or ./configs.yaml if present), then env vars."""
    env = os.environ if env is None else env
    settings = Settings(providers=dict(PRESETS))
    path = path or env.get("LLM_CONFIG")
    if path is None and Path(DEFAULT_CONFIG_FILE).is_file():
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        settings = _apply_file(settings, Path(path))
    settings = _apply_env(settings, env)
    _check_references(settings)
    return settings


def _apply_file(settings: Settings, path: Path) -> Settings:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", fix="pass an existing file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}", fix="fix the syntax at the line shown") from e
    if data is None:
        return replace(settings, source=str(path))
    where = Where(str(path))
    expect(data, dict, where, "the top level")
    where.unknown_keys(data, ("default", "style", "providers", "server", "knowledge", "store", "sessions"),
                       "")
    out = replace(settings, source=str(path))
    if "default" in data:
        out = replace(out, default=expect(data["default"], str, where, "default"))
    if "style" in data:
        out = replace(out, style=_style_from(data["style"], where))
    if "server" in data:
        out = replace(out, server=_dataclass_from(ServerConfig, data["server"], where, "server"))
    if data.get("store") is not None:
        out = replace(out, store=store_url(expect(data["store"], str, where, "store"), where, "store"))
    if "knowledge" in data:
        out = replace(out, knowledge=knowledge_from(data["knowledge"], where, path.parent))
    if "sessions" in data:
        out = replace(out, sessions=sessions_from(data["sessions"], where, path.parent))
    providers = dict(out.providers)
    for name, entry in (expect(data.get("providers") or {}, dict, where, "providers")).items():
        if not isinstance(name, str) or not name.strip() or "/" in name:
            where.fail(f"providers.{name}", "a provider name must be a non-empty string without '/'")
        providers[name] = _provider_from(name, entry, providers.get(name), where)
    return replace(out, providers=providers)


def _provider_from(name: str, entry: Any, base: ProviderConfig | None, where: Where) -> ProviderConfig:
    key = f"providers.{name}"
    entry = expect(entry, dict, where, key)
    if "api_key" in entry:      # before the unknown-key check, which would hide the reason
        where.fail(f"{key}.api_key",
                   "keys never live in the file: name the environment variable with api_key_env")
    allowed = [f.name for f in fields(ProviderConfig) if f.name != "name"]
    where.unknown_keys(entry, allowed, key + ".")
    kind = entry.get("kind", base.kind if base else None)
    if kind not in KINDS:
        where.fail(f"{key}.kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")
    values: dict[str, Any] = {}
    for f in fields(ProviderConfig):
        if f.name in entry:
            values[f.name] = _convert_provider_field(f.name, entry[f.name], where, f"{key}.{f.name}", kind)
    if base is not None and base.kind == kind:
        cfg = replace(base, **values)
    else:
        cfg = ProviderConfig(name=name, **values)
    if cfg.kind != "echo" and not cfg.model:
        where.fail(f"{key}.model", "a model id or path is required for this kind")
    if "base_urls" in values:
        cfg = _with_replicas(cfg, "base_url" in values, where, key)
    return cfg


def _with_replicas(cfg: ProviderConfig, own_base_url: bool, where: Where, key: str) -> ProviderConfig:
    """`base_urls`: the openai kind's servers of one model, each an http(s) URL, no repeats; `base_url`
    becomes the first (a `base_url` given beside them must be one of them)."""
    urls = cfg.base_urls
    if cfg.kind != "openai":
        where.fail(f"{key}.base_urls", "only the openai kind has replicas (several servers of one model)")
    if not urls or not all(re.match(r"https?://[^/\s]+", u) for u in urls):
        where.fail(f"{key}.base_urls", "must be a list of http(s):// URLs, such as http://10.0.0.2:8000/v1")
    if len({u.rstrip("/") for u in urls}) != len(urls):
        where.fail(f"{key}.base_urls", "lists a server twice")
    if own_base_url and cfg.base_url not in urls:
        where.fail(f"{key}.base_url", "give base_urls alone (base_url is then the first of them)")
    return replace(cfg, base_url=urls[0])


def _convert_provider_field(name: str, value: Any, where: Where, key: str, kind: str | None = None) -> Any:
    if name in ("api_key_env", "fallback", "aliases", "base_urls"):
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            where.fail(key, "must be a list of URLs" if name == "base_urls"
                       else "must be a name or a list of names")
        return tuple(items)
    if name in ("trust_remote_code", "stream_usage"):
        return expect(value, bool, where, key)
    if name == "generation":
        value = expect(value, dict, where, key)
        where.unknown_keys(value, GENERATION_KEYS, key + ".")
        from llm.errors import InvalidRequestError
        from llm.types import GenerationParams
        try:
            GenerationParams(**value)
        except InvalidRequestError as e:
            where.fail(key, e.message)
        return dict(value)
    if name == "timeout":
        if value is None:
            return None
        if not is_number(value) or value <= 0:
            where.fail(key, "must be a positive number of seconds")
        return float(value)
    if name in ("cooldown", "first_token_timeout", "stall_timeout", "hedge_after"):
        if value is None:
            return None
        if not is_number(value) or value < 0:
            where.fail(key, "must be a number of seconds, 0 or more (0 turns it off)")
        return float(value)
    if name == "retries":
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_RETRIES:
            where.fail(key, f"must be a whole number from 0 to {MAX_RETRIES}")
        return value
    if name in ("context_window", "max_concurrency"):
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            where.fail(key, "must be a positive integer")
        return value
    if name == "style_mode" and value not in (None, "system", "prefix"):
        where.fail(key, "must be system or prefix")
    if name == "dtype" and value not in ("auto", "bfloat16", "float16", "float32"):
        where.fail(key, "must be auto, bfloat16, float16 or float32")
    if name == "engine" and value not in ("auto", "batched", "generate"):
        where.fail(key, "must be auto, batched (continuous batching, for CUDA) or generate")
    if name == "quantization" and kind == "gguf":
        if value is not None and not (isinstance(value, str) and GGUF_QUANTIZATION.match(value)):
            where.fail(key, "must be a GGUF quantization such as q4_k_m, q8_0 or f16 (it picks the file "
                            "among a hub repo's .gguf files), or null")
    elif name == "quantization" and value not in (None, "8bit", "4bit"):
        where.fail(key, "must be 8bit, 4bit or null (bitsandbytes; pre-quantized AWQ/GPTQ models need none)")
    if name in ("prompt_template", "style_mode", "base_url", "download", "quantization") and value is None:
        return None
    return expect(value, str, where, key)


def _dataclass_from(cls, data: Any, where: Where, key: str):
    data = expect(data, dict, where, key)
    names = {f.name: f for f in fields(cls)}
    where.unknown_keys(data, list(names), key + ".")
    values = {}
    for k, v in data.items():
        default = getattr(cls(), k)
        if isinstance(default, bool):
            values[k] = expect(v, bool, where, f"{key}.{k}")
        elif isinstance(default, int):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                where.fail(f"{key}.{k}", "must be a positive integer")
            values[k] = v
        else:
            values[k] = expect(v, str, where, f"{key}.{k}")
    return cls(**values)


def _style_from(data: Any, where: Where) -> StyleConfig:
    data = expect(data, dict, where, "style")
    where.unknown_keys(data, [f.name for f in fields(StyleConfig)], "style.")
    values: dict[str, Any] = {}
    for k, v in data.items():
        key = f"style.{k}"
        if k in ("short_answer", "emotions"):
            values[k] = expect(v, bool, where, key)
        elif k == "max_seconds":
            if not is_number(v) or not valid_seconds(v):
                where.fail(key, SECONDS_RULE)
            values[k] = float(v)
        elif k == "max_chars":
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                where.fail(key, "must be a positive integer (or null to use max_seconds)")
            values[k] = v
        else:   # emotion_set
            names = v if isinstance(v, list) else None
            if not names or not all(isinstance(n, str) and n.isidentifier() and n.isascii() for n in names):
                where.fail(key, "must be a list of tag names of letters, such as [neutral, joy, sad]")
            values[k] = tuple(n.lower() for n in names)
    return StyleConfig(**values)


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    where = Where("environment")
    out = settings
    if "LLM_STORE" in env:
        out = replace(out, store=store_url(env["LLM_STORE"], where, "LLM_STORE"))
    if env.get("LLM_DEFAULT_PROVIDER"):
        out = replace(out, default=env["LLM_DEFAULT_PROVIDER"])
    if "LLM_SHORT_ANSWER" in env:
        raw = env["LLM_SHORT_ANSWER"].strip().lower()
        if raw not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
            where.fail("LLM_SHORT_ANSWER", "must be 1/0, true/false, yes/no or on/off")
        out = replace(out, style=replace(out.style, short_answer=raw in ("1", "true", "yes", "on")))
    if "LLM_MAX_CHARS" in env:
        raw = env["LLM_MAX_CHARS"].strip()
        if not raw.isdigit() or int(raw) < 1:
            where.fail("LLM_MAX_CHARS", "must be a positive integer")
        out = replace(out, style=replace(out.style, max_chars=int(raw)))
    if "LLM_MAX_SECONDS" in env:
        raw = env["LLM_MAX_SECONDS"].strip()
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not valid_seconds(seconds):
            where.fail("LLM_MAX_SECONDS", SECONDS_RULE)
        out = replace(out, style=replace(out.style, max_seconds=seconds))
    return out


def _check_references(settings: Settings) -> None:
    where = Where(settings.source)
    writer = settings.knowledge.questions
    if writer is not None and (writer not in settings.providers or settings.providers[writer].kind == "echo"):
        known = ", ".join(n for n, c in settings.providers.items() if c.kind != "echo")
        where.fail("knowledge.questions", f"names no provider with a model: {writer!r} (known: {known})")
    if settings.default not in settings.providers:
        known = ", ".join(settings.providers)
        where.fail("default", f"names no provider: {settings.default!r} (known: {known})")
    for cfg in settings.providers.values():
        for other in cfg.fallback:
            if other not in settings.providers:
                where.fail(f"providers.{cfg.name}.fallback", f"names no provider: {other!r}")
            if other == cfg.name:
                where.fail(f"providers.{cfg.name}.fallback", "a provider cannot fall back to itself")
        for alias in cfg.aliases:
            owners = [c.name for c in settings.providers.values() if alias in c.aliases]
            if alias in settings.providers or len(owners) > 1:
                clash = alias if alias in settings.providers else " and ".join(owners)
                where.fail(f"providers.{cfg.name}.aliases", f"{alias!r} is already the name of {clash}")
        if cfg.hedge_after and not cfg.fallback:
            where.fail(f"providers.{cfg.name}.hedge_after", "needs a fallback to start beside the provider")
