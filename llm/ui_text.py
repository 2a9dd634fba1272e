"""The page's words in Chinese and English.

`LABELS` are the components' labels, given to Gradio's i18n: the browser shows those of its language
(Chinese for any zh-*, else English), or those the page's language switch chose. `TEXTS` are what the
handlers write (readiness notes, status lines, the frame of an error): `say(lang, key, ...)`, where `lang`
is the page's language as the browser reports it. An upstream's own words stay as the upstream said them.
"""

from __future__ import annotations

LANGS = ("zh", "en")

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Digital Human Assistant",
        "provider": "Provider",
        "speak": "Speak replies",
        "settings": "Settings",
        "persona": "Persona",
        "system": "System prompt",
        "short": "Short spoken answers",
        "knowledge": "Answer from the knowledge",
        "budget": "Answer budget (seconds of speech)",
        "sampling": "Sampling",
        "temperature": "Temperature (0 = greedy)",
        "top_p": "top_p",
        "max_new": "Max new tokens",
        "api": "API",
        "send": "Send",
        "stop": "Stop",
        "new": "New conversation",
        "message": "Ask something…",
        "chat": "Chat",
        "download": "Download the model",
        "theme": "Character",
        "kb": "Knowledge",
        "kb_add": "Add documents",
        "kb_doc": "Document to delete",
        "kb_delete": "Delete",
        "greeting": "Hello! Ask me anything, in Chinese or English.",
    },
    "zh": {
        "title": "数字人助手",
        "provider": "模型",
        "speak": "朗读回答",
        "settings": "设置",
        "persona": "角色",
        "system": "系统提示词",
        "short": "简短口语回答",
        "knowledge": "依据知识库回答",
        "budget": "回答时长（秒）",
        "sampling": "采样参数",
        "temperature": "温度（0 为贪心）",
        "top_p": "top_p 截断",
        "max_new": "最多生成词元数",
        "api": "接口",
        "send": "发送",
        "stop": "停止",
        "new": "新对话",
        "message": "请输入问题…",
        "chat": "对话",
        "download": "下载模型",
        "theme": "形象",
        "kb": "知识库",
        "kb_add": "添加文档",
        "kb_doc": "要删除的文档",
        "kb_delete": "删除",
        "greeting": "你好！有什么可以帮你？中文或英文都可以。",
    },
}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "ready": "ready",
        "not_ready": "not ready",
        "cooling": "cooling down",
        "note_ready": "**{label}** is ready.",
        "note_loads": "**{label}** is ready; the model loads on the first message (progress is shown).",
        "note_cooling": "**{label}** is {reason}. {fix}.",
        "note_not_ready": "**{label}** is not ready: {reason}.",
        "fix_run": "To fix it, run:",
        "or_run": "Or run:",
        "fix": "To fix it:",
        "or": "Or",
        "then_restart": "then restart `python webui.py`.",
        "answered": "Answered by **{label}**",
        "fallback": "Answered by **{label}** (fallback: {chosen} was unavailable)",
        "from_knowledge": "Answered from the **knowledge** (no model was asked)",
        "stopped": "Stopped.",
        "not_answered": "**Not answered:** {message}",
        "fix_label": "Fix",
        "unexpected": "unexpected error",
        "feeling": "feeling",
        "loading": "Loading {label}",
        "empty_reply": "{label} returned an empty reply",
        "empty_fix": "try again or choose another provider",
        "unread": "The conversation could not be read: {message}",
        "download_failed": "**{label}**: the download did not finish: {message}",
        "download_choices": "Try again, or download from elsewhere:",
        "download_commands": "Or in a terminal:",
    },
    "zh": {
        "ready": "就绪",
        "not_ready": "未就绪",
        "cooling": "冷却中",
        "note_ready": "**{label}** 已就绪。",
        "note_loads": "**{label}** 已就绪；第一次提问时加载模型（会显示进度）。",
        "note_cooling": "**{label}** 暂不可用：{reason}。{fix}。",
        "note_not_ready": "**{label}** 未就绪：{reason}。",
        "fix_run": "解决方法，运行：",
        "or_run": "或运行：",
        "fix": "解决方法：",
        "or": "或者",
        "then_restart": "然后重新启动 `python webui.py`。",
        "answered": "由 **{label}** 回答",
        "fallback": "由 **{label}** 回答（备用：{chosen} 暂不可用）",
        "from_knowledge": "来自**知识库**的回答（未调用模型）",
        "stopped": "已停止。",
        "not_answered": "**未能回答：** {message}",
        "fix_label": "解决方法",
        "unexpected": "意外错误",
        "feeling": "情绪",
        "loading": "正在加载 {label}",
        "empty_reply": "{label} 返回了空回答",
        "empty_fix": "请重试或换一个模型",
        "unread": "无法读取对话记录：{message}",
        "download_failed": "**{label}**：下载未完成：{message}",
        "download_choices": "可以重试，或换一个下载源：",
        "download_commands": "或在终端运行：",
    },
}


def lang_of(value: object) -> str:
    """The page's language from the browser's tag ("zh-CN", "en-US", ...): zh or en."""
    return "zh" if isinstance(value, str) and value.lower().startswith("zh") else "en"


def say(lang: str, key: str, **values: object) -> str:
    """A handler's text in the page's language (English where a key has no Chinese)."""
    table = TEXTS.get(lang_of(lang), TEXTS["en"])
    return table.get(key, TEXTS["en"][key]).format(**values)


def i18n():
    """Gradio's i18n of the labels: Chinese for every zh locale Gradio knows, English otherwise."""
    import gradio as gr

    return gr.I18n(en=LABELS["en"], zh=LABELS["zh"], **{"zh-CN": LABELS["zh"], "zh-TW": LABELS["zh"],
                                                        "zh-HK": LABELS["zh"]})
