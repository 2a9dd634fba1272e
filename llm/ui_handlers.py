"""The web page's handler logic: free of layout (tests drive it without a browser) and of shared state."""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import logging
import re
import shlex
import threading
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import gradio as gr

from . import download
from .errors import CancelledError, LLMError
from .reply import Reply
from .router import KNOWLEDGE, Router
from .speech import spoken_seconds
from .types import CancelToken, GenerationParams, normalize_history
from .ui_knowledge import sources_html, without_sources
from .ui_session import conversation, hear, keep, new_session_id
from .ui_session import open_conversation as open_conversation  # a page handler, as ui_page calls it
from .ui_text import say

log = logging.getLogger(__name__)

# (label, system prompt); a tuple so the presets cannot be changed at run time by anyone.
PERSONAS: tuple[tuple[str, str], ...] = (
    ("Friendly assistant", "You are a friendly digital human assistant. Answer warmly and clearly."),
    ("数字人讲解员 (Chinese guide)", "你是一名亲切的数字人讲解员，用简洁、口语化的中文回答问题。"),
    ("Patient tutor", "You are a patient tutor. Explain step by step with one simple example."),
    ("Customer service", "You are a polite customer-service agent. Be brief and offer the next step."),
    ("No system prompt", ""),
)
EXAMPLES = ("你好，请介绍一下你自己。", "北京有哪些好玩的地方？", "What can a digital human do?",
            "Tell me a fun fact about the moon.")
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 512}
Progress = Callable[..., Any]
History = list[dict[str, str]]
COMMANDS = ("export ", "python ", "pip ", "huggingface-cli ", "ollama ")   # fix hints that are commands


class Turn(CancelToken):
    """One chat turn of a browser: its cancel token, whether Stop was pressed, the error to show after it,
    and its keeping in the conversation (the server's session) as far as the browser said it."""

    stopped = False     # not just cancelled: the router also cancels the token when a stream ends
    cleared = False     # a new conversation, or a newer turn: this one must not write to the chat again
    done = False
    error: str | None = None        # the notice (Markdown) for `report` to show after a failed turn
    reply: Reply | None = None      # its reply, while and once it is said; None again if it failed
    provider: str | None = None     # the provider chosen for it

    def __init__(self, previous: Turn | None = None):
        super().__init__()
        self.previous = previous    # the turn it cut off: kept before this one reads the conversation
        self.kept = threading.Event()   # set once its exchange is in the conversation (or never will be)
        self._lock = threading.Lock()   # keeping and hearing, in either order, from two handlers' threads
        self._spoken: int | None = None     # the sentences the browser began to say; None: all shown
        self._kept_in: str | None = None

    def stop(self) -> None:
        self.stopped = True
        self.cancel()

    def hear(self, router: Router, spoken: float | None) -> None:
        """The browser began to say only `spoken` sentences of this turn's reply before Stop or a new
        message (negative or None: it showed the reply without a voice, so all of it counts)."""
        if spoken is None or spoken < 0:
            return
        with self._lock:
            self._spoken = int(spoken)
            if self._kept_in is not None:   # already kept whole: cut it to what was said
                router.sessions.heard(self._kept_in, self._spoken)

    def keep(self, router: Router, session: str, question: str) -> None:
        """Keep the answered exchange in the conversation, cut to what the browser said (blocking)."""
        with self._lock:
            try:
                if self.reply is not None and self.reply.text:
                    router.sessions.record(session, question, self.reply.text, self.reply.provider,
                                           "stopped" if self.stopped else None)
                    self._kept_in = session
                    if self._spoken is not None:
                        router.sessions.heard(session, self._spoken)
            finally:
                self.kept.set()


@dataclass(frozen=True)
class TurnOptions:
    """The sidebar's values for one turn."""

    provider: str
    system: str = ""
    style: bool = True
    max_seconds: float = 5.0     # the answer budget, in seconds of speech
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    knowledge: bool = True      # off: this turn is answered without the knowledge
    session: str = ""           # the browser's conversation, kept by the server ("": none)
    lang: str = "en"            # the page's language (its status lines and notices)

    def params(self) -> GenerationParams:
        return GenerationParams(temperature=self.temperature, top_p=self.top_p or None,  # 0: no nucleus cut
                                max_new_tokens=int(self.max_new_tokens) if self.max_new_tokens else None)


def provider_choices(router: Router, lang: str = "en") -> list[tuple[str, str]]:
    """(label with readiness, name) for every configured provider, for the dropdown."""
    return [(f"{router.settings.providers[name].display_name} — "
             f"{say(lang, 'ready' if st.ready else 'cooling' if st.cooldown_s else 'not_ready')}", name)
            for name, st in router.statuses().items()]


def provider_note(router: Router, name: str, lang: str = "en") -> str:
    """Markdown saying whether a provider can answer, and if not, why and how to fix it."""
    label = router.settings.providers[name].display_name
    status = router.status(name)
    if status.cooldown_s:
        return say(lang, "note_cooling", label=label, reason=status.reason, fix=status.fix.capitalize())
    if not status.ready:    # the fix hint ("export X=... or set ..."): each command in a code block, to copy
        out = [say(lang, "note_not_ready", label=label, reason=status.reason)]
        for i, p in enumerate(part.strip() for part in (status.fix.split(" or ") if status.fix else [])):
            if p.startswith(COMMANDS):
                after = " " + say(lang, "then_restart") if p.startswith("export ") else ""
                out.append(say(lang, "fix_run" if i == 0 else "or_run") + f"\n\n```bash\n{p}\n```\n{after}")
            else:
                out.append(say(lang, "fix" if i == 0 else "or") + " " + p + ".")
        return "\n\n".join(out)
    return say(lang, "note_loads" if _needs_loading(router, name) else "note_ready", label=label)


def choose_provider(router: Router, name: str, lang: str = "en") -> tuple[str, float, float, int]:
    """Dropdown change: the readiness note (the page's one notice: it replaces the last) and the
    sampling defaults."""
    return (provider_note(router, name, lang), *sampling_defaults(router, name))


def can_download(router: Router, name: str) -> bool:
    """Whether the page should offer a Download button: a local model whose files are not here."""
    cfg = router.settings.providers[name]
    if cfg.kind not in ("local", "gguf") or router.status(name).ready:
        return False
    try:
        return bool(download.plan(cfg))
    except download.DownloadError:
        return False    # a folder with no hub id: nothing to fetch


async def download_model(router: Router, name: str, lang: str = "en",
                         other: bool = False) -> tuple[str, Any, Any, Any]:
    """Download, or with `other` from the other hub (hf-mirror.com or $HF_MIRROR, or huggingface.co when
    HF_ENDPOINT is the mirror): the model, then shown ready without a restart (notice, dropdown, Download,
    Other).
    A failure keeps Download (to try again), offers the other hub, and names the commands for the rest."""
    cfg = router.settings.providers[name]
    endpoint, mirror = download.hub_location()[0], download.mirror()
    elsewhere = "https://huggingface.co" if endpoint == mirror else mirror
    plan = download.plan(cfg)
    if other:
        plan = dataclasses.replace(plan, endpoint=elsewhere)
    try:    # to_thread keeps gr.Progress's context, for the tqdm bars
        await asyncio.to_thread(download.download, plan)
    except download.DownloadError as e:
        log.warning("downloading %s failed: %s", name, e)
        commands = (f"```bash\nHF_ENDPOINT={mirror} python -m llm download {name}\n"
                    f"python -m llm download {name} --source modelscope\n```")
        note = "\n\n".join([say(lang, "download_failed", label=cfg.display_name, message=_escaped(str(e))),
                             say(lang, "download_choices"), say(lang, "download_commands"), commands])
        host = elsewhere.split("://", 1)[-1]
        return note, gr.skip(), gr.update(visible=True), gr.update(visible=True, value=f"⬇ {host}")
    return (provider_note(router, name, lang), gr.update(choices=provider_choices(router, lang)),
            gr.update(visible=can_download(router, name)), gr.update(visible=False))


def sampling_defaults(router: Router, name: str) -> tuple[float, float, int]:
    """The slider values for a provider: its configured generation defaults, else ours."""
    merged = {**DEFAULT_SAMPLING, **router.settings.providers[name].generation}
    return (float(merged["temperature"]), float(merged["top_p"]), int(merged["max_new_tokens"]))


def _needs_loading(router: Router, name: str) -> bool:
    provider = router.provider(name)
    return hasattr(provider, "load") and not getattr(provider, "loaded", True)


def api_curl(api_port: int, api_key: str | None, provider: str | None = None,
             host: str = "127.0.0.1") -> str:
    """The curl command for the seed API on the real port; a key placeholder, never the key."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
    body = {"prompt": "你好，请介绍一下你自己。", **({"provider": provider} if provider else {})}
    auth = ['  -H "Authorization: Bearer $LLM_API_KEY"'] if api_key else []
    return " \\\n".join([f"curl -N http://{host}:{api_port}/", "  -H 'Content-Type: application/json'", *auth,
                         f"  -d {shlex.quote(json.dumps(body, ensure_ascii=False))}"])


def start_turn(message: str, history: Any, previous: Turn | None = None, *, router: Router | None = None,
               spoken: float | None = None) -> tuple[Any, History, Turn | None]:
    """Send: move the typed text into the chat with a fresh cancel token; empty input changes nothing.
    A running turn is stopped and barred from the chat (its last update would drop this message), and
    kept as far as the browser said it (`spoken`, see `Turn.hear`): the avatar was talked over."""
    history = to_messages(history)
    if not (message or "").strip():
        return gr.skip(), history, previous
    if previous is not None and router is not None:
        hear(router, previous, spoken)
    clear(previous)
    return "", history + [{"role": "user", "content": message}], Turn(previous)


def stop(turn: Turn | None, router: Router | None = None, spoken: float | None = None,
         lang: str = "en") -> Any:
    """Stop: a local model stops at its next token, a cloud stream is closed, and the conversation keeps
    the sentences the browser began to say (`spoken`). Returns the status line."""
    if turn is not None and router is not None:
        hear(router, turn, spoken)
    if turn is None or turn.done:
        return gr.skip()
    turn.stop()
    return say(lang, "stopped")


def new_conversation(turn: Turn | None) -> tuple[History, str, str, None, str]:
    """New conversation: stop the turn, empty the chat, and a new id for the browser to keep (the old
    conversation stays on the server until it expires)."""
    return (*clear(turn), new_session_id())


def to_messages(history: Any) -> History:
    """The Chatbot's value as plain role/content dicts (Gradio may send content blocks)."""
    return [m.as_dict() for m in normalize_history(history or [])]


async def respond(router: Router, history: Any, opts: TurnOptions, turn: Turn | None,
                  progress: Progress | None = None) -> AsyncIterator[tuple[History, str, Any, str]]:
    """Stream the answer to the pending question as (history, status line, input box, sayings) updates.
    On an error the chat and the input box go back to before the turn, and `turn.error` holds a gr.Error
    for `report` to raise: the avatar never says an error, and Gradio does not paint "Error" on the chat."""
    history = to_messages(history)
    if not history or history[-1]["role"] != "user":
        return      # no pending question (an empty Send)
    before, question, turn = history[:-1], history[-1]["content"], turn or Turn()
    turn.provider = opts.provider
    told = without_sources(before)     # what the model is told: the chat, or the conversation as heard
    try:
        if opts.session:
            told = await conversation(router, opts.session, turn)
        async with aclosing(_stream(router, told, question, opts, turn, progress)) as updates:
            async for reply, status, sayings in updates:
                if turn.cleared:
                    return
                yield history + [{"role": "assistant", "content": reply}], status, gr.skip(), sayings
    except CancelledError:
        # Stopped before any text: nothing to keep, so hand the question back (unless cleared).
        if not turn.cleared:
            yield before, say(opts.lang, "stopped"), question, Sayings.NONE
    except LLMError as e:
        turn.reply = None
        fix = f"\n\n{say(opts.lang, 'fix_label')}: `{e.fix}`" if e.fix else ""
        turn.error = say(opts.lang, "not_answered", message=_escaped(with_labels(router, e.message))) + fix
        yield before, "", question, Sayings.NONE
    except Exception as e:
        turn.reply = None
        log.exception("unexpected failure in a chat turn")
        message = f"{say(opts.lang, 'unexpected')}: {type(e).__name__}: {e}"
        turn.error = say(opts.lang, "not_answered", message=_escaped(message))
        yield before, "", question, Sayings.NONE
    finally:
        turn.done = True
        if opts.session:
            await keep(router, turn, opts.session, question)


def with_labels(router: Router, message: str) -> str:
    """An error as the page names things: "chatgpt: rate limited" -> "OpenAI ChatGPT: rate limited"."""
    for name, cfg in router.settings.providers.items():
        if cfg.display_name != name:
            message = re.sub(rf"(?<![\w(-]){re.escape(name)}(?=: )", cfg.display_name, message)
    return message


def report(turn: Turn | None, router: Router | None = None, provider: str | None = None,
           lang: str = "en") -> Any:
    """After a turn, the page's one notice (no toasts: they pile up over the conversation): the turn's
    error while its provider is still the one chosen; else what the chosen provider's readiness is now
    (a failure may have started its cooldown). Nothing for a turn of an earlier choice."""
    if turn is None or router is None or provider is None:
        return gr.skip()
    if turn.error is not None:
        return turn.error if turn.provider in (None, provider) else gr.skip()
    return provider_note(router, provider, lang)


def _escaped(text: str) -> str:
    """Text shown as itself in Markdown: no markup, no HTML."""
    return re.sub(r"([\\`*_{}\[\]<>#|~])", r"\\\1", text)


class Sayings:
    """What the avatar says: `Reply.events` as JSON in the hidden #sayings; page.js speaks new entries."""

    NONE = "<pre>[]</pre>"

    @staticmethod
    def html(events: list[dict]) -> str:
        """With each sentence's `seconds`: how long a voice takes to say it (the router's own rates), so
        that without a voice the avatar still mouths it for as long."""
        timed = [{**e, "seconds": round(spoken_seconds(e.get("speech") or e["sentence"]), 2)} for e in events]
        return f"<pre>{html.escape(json.dumps(timed, ensure_ascii=False))}</pre>"


async def _stream(router: Router, before: History, question: str, opts: TurnOptions,
                  turn: Turn, progress: Progress | None) -> AsyncIterator[tuple[str, str, str]]:
    """(growing reply, status line, sayings) triples; a stop after some text ends quietly with the
    partial reply, and the avatar does not start its unfinished last sentence. The finished reply shows
    the sources it used folded under it (the sayings never carry them)."""
    # arequest: the knowledge lookup (the index on disk) and a provider's first build run off the loop
    req = await router.arequest(question, provider=opts.provider, history=before, system=opts.system or None,
                                params=opts.params(), style=opts.style, max_seconds=float(opts.max_seconds),
                                knowledge=bool(opts.knowledge), affinity=opts.session or None)
    if router.status(opts.provider).ready and _needs_loading(router, opts.provider):   # before its first turn

        def report(fraction: float, message: str = "") -> None:
            if progress is not None:
                label = router.settings.providers[opts.provider].display_name
                progress(fraction, desc=message or say(opts.lang, "loading", label=label))

        report(0.0)
        # to_thread copies the context, so gr.Progress still finds this event from the worker.
        await asyncio.to_thread(router.provider(opts.provider).load, progress=report)
    reply, feeling, said = Reply(req, turn, speak=True), "", Sayings.NONE
    turn.reply = reply
    try:
        async with aclosing(reply.chunks(router.astream(req, cancel=turn))) as chunks:
            async for chunk in chunks:
                feeling = f" · {say(opts.lang, 'feeling')}: {chunk.emotion}" if chunk.emotion else feeling
                said = Sayings.html(reply.events)
                who = answered_by(router, opts.provider, reply.provider, opts.lang)
                yield reply.text, f"{who}{feeling} …", said
    except CancelledError:
        if not reply.text:
            raise
    answered = answered_by(router, opts.provider, reply.provider, opts.lang)
    if turn.stopped:   # a provider may also end quietly when cancelled: say no more
        if not reply.text:
            raise CancelledError("generation cancelled")
        yield reply.text + sources_html(reply.sources), f"{say(opts.lang, 'stopped')} {answered}", said
    elif not reply.text:
        raise LLMError(say(opts.lang, "empty_reply", label=opts.provider), fix=say(opts.lang, "empty_fix"))
    else:
        yield reply.text + sources_html(reply.sources), answered + feeling, Sayings.html(reply.events)


def answered_by(router: Router, chosen: str, answered: str, lang: str = "en") -> str:
    """The status line naming the provider that actually answered, and the fallback if any."""
    if answered == KNOWLEDGE:   # an FAQ answer (or the miss reply), said as written: no model was asked
        return say(lang, "from_knowledge")
    names = router.settings.providers
    label = names[answered].display_name if answered in names else answered
    if answered and answered != chosen:
        return say(lang, "fallback", label=label, chosen=names[chosen].display_name)
    return say(lang, "answered", label=label)


def clear(turn: Turn | None) -> tuple[History, str, str, None]:
    """Stop any running turn and empty this browser's chat (and what the avatar says)."""
    if turn is not None:
        turn.cleared = True
    stop(turn)
    return [], "", Sayings.NONE, None
