"""Settings: presets, YAML file, environment, and errors that name the file, key and fix."""

import pytest

from configs import PRESETS, load_settings
from llm.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "configs.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_presets_work_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(env={})
    assert s.default == "direct" and s.style.short_answer and s.style.max_chars is None
    assert s.style.max_seconds == 5.0 and not s.style.emotions     # 5 s: what 25 Chinese characters take
    assert {"direct", "linly", "qwen", "chatglm", "chatgpt", "gemini", "glm"} <= set(s.providers)
    assert s.providers["linly"].generation == {"top_k": 20, "top_p": 0.84, "temperature": 1.0,
                                               "repetition_penalty": 1.15}
    assert s.providers["gemini"].api_key_env == ("GEMINI_API_KEY", "GOOGLE_API_KEY")


def test_the_documented_file_adds_and_overrides_providers(tmp_path):
    path = write(tmp_path, """
default: mygpt
style: {short_answer: false, max_chars: 40}
providers:
  mygpt:
    kind: openai
    model: gpt-4o-mini
    base_url: http://127.0.0.1:8000/v1
    api_key_env: OPENAI_API_KEY
    timeout: 30
    fallback: [glm, direct]
  myqwen:
    kind: local
    model: /models/Qwen1.5-1.8B-Chat
    trust_remote_code: false
    prompt_template: null
  qwen:
    model: /models/qwen-local
""")
    s = load_settings(path, env={})
    assert s.default == "mygpt" and not s.style.short_answer and s.style.max_chars == 40
    gpt = s.providers["mygpt"]
    assert (gpt.kind, gpt.base_url, gpt.api_key_env, gpt.timeout, gpt.fallback) == (
        "openai", "http://127.0.0.1:8000/v1", ("OPENAI_API_KEY",), 30.0, ("glm", "direct"))
    assert s.providers["myqwen"].kind == "local" and s.providers["myqwen"].prompt_template is None
    assert s.providers["qwen"].model == "/models/qwen-local" and s.providers["qwen"].kind == "local"
    assert s.providers["chatgpt"] == PRESETS["chatgpt"]


def test_environment_overrides_the_file(tmp_path):
    path = write(tmp_path, "style: {max_chars: 40}\n")
    s = load_settings(path, env={"LLM_MAX_CHARS": "30", "LLM_SHORT_ANSWER": "off",
                                 "LLM_DEFAULT_PROVIDER": "qwen"})
    assert (s.style.max_chars, s.style.short_answer, s.default) == (30, False, "qwen")


def test_configs_yaml_in_the_working_directory_is_picked_up(tmp_path, monkeypatch):
    write(tmp_path, "default: qwen\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).default == "qwen"


@pytest.mark.parametrize("text,key,words", [
    ("providers: {x: {kind: banana, model: m}}", "providers.x.kind", "local, openai"),
    ("providers: {x: {kind: openai}}", "providers.x.model", "required"),
    ("providers: {x: {kind: openai, model: m, api_key: sk-123}}", "providers.x.api_key", "keys never live in the file"),
    ("providers: {x: {kind: openai, model: m, temprature: 1}}", "providers.x.temprature", "unknown key"),
    ("providers: {x: {kind: openai, model: m, timeout: -1}}", "providers.x.timeout", "positive"),
    ("providers: {x: {kind: openai, model: m, fallback: [nope]}}", "providers.x.fallback", "nope"),
    ("providers: {x: {kind: local, model: m, trust_remote_code: 'yes'}}", "providers.x.trust_remote_code",
     "bool"),
    ("providers: {x: {kind: local, model: m, generation: {temperature: 9}}}", "providers.x.generation",
     "temperature"),
    ("default: nobody", "default", "nobody"),
    ("style: {max_chars: 0}", "style.max_chars", "positive"),
    ("style: {max_seconds: 0}", "style.max_seconds", "above 0"),
    ("style: {max_seconds: fast}", "style.max_seconds", "seconds"),
    ("style: {emotion_set: []}", "style.emotion_set", "list of tag names"),
    ("style: {emotion_set: [joy, 'not ok']}", "style.emotion_set", "list of tag names"),
    ("style: {emotions: 1}", "style.emotions", "bool"),
    ("style: {short_answer: 1}", "style.short_answer", "bool"),
    ("colour: red", "colour", "unknown key"),
    ("providers: [a, b]", "providers", "dict"),
    ("default: [unclosed", "", "YAML"),
])
def test_bad_files_name_the_file_the_key_and_the_fix(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_settings(path, env={})
    msg = str(e.value)
    assert str(path) in msg and key in msg and words in msg
    assert "sk-123" not in msg


def test_missing_file_and_bad_env_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="LLM_MAX_CHARS"):
        load_settings(env={"LLM_MAX_CHARS": "many", "LLM_CONFIG": str(write(tmp_path, ""))})


def test_the_budget_in_seconds_and_emotions_come_from_the_file_and_env(tmp_path):
    path = write(tmp_path, "style: {max_seconds: 8, emotions: true, emotion_set: [Calm, joy]}\n")
    s = load_settings(path, env={})
    assert (s.style.max_seconds, s.style.emotions, s.style.emotion_set) == (8.0, True, ("calm", "joy"))
    assert load_settings(path, env={"LLM_MAX_SECONDS": "3.5"}).style.max_seconds == 3.5
    for bad in ("0", "nan", "soon", "1e9"):
        with pytest.raises(ConfigError, match="LLM_MAX_SECONDS"):
            load_settings(path, env={"LLM_MAX_SECONDS": bad})
