"""The page's Knowledge panel: the documents listed, uploaded and deleted (llm/knowledge does the work,
off the event loop); every failure shown as its message and fix, never a traceback."""

from __future__ import annotations

import asyncio
import html
import logging
import re
from pathlib import Path
from typing import Any

import gradio as gr

from .errors import LLMError
from .knowledge.docs import PARSED_KINDS, TEXT_KINDS
from .router import Router

log = logging.getLogger(__name__)

UPLOAD_TYPES = [*TEXT_KINDS, *PARSED_KINDS]     # what the knowledge reads (.pdf .docx with their parser)
# The sources folded under a reply: the end of the displayed message, never part of what is said or sent.
SOURCES_FOLD = re.compile(r'\s*<details class="dh-sources">.*?</details>\s*\Z', re.S)
SOURCE_CHARS = 160      # a source's text is clipped to this under the reply


def knowledge_on(router: Router) -> bool:
    """Whether the page shows the knowledge (its toggle and panel): `knowledge:` is configured."""
    return router.settings.knowledge.enabled


class Documents:
    """The knowledge panel's HTML: the documents table and the notice after an upload or a delete."""

    LOADING = "<p>Reading the documents…</p>"

    @staticmethod
    def table(docs: list[dict]) -> str:
        if not docs:
            return "<p>No documents yet: upload one below.</p>"
        rows = "".join(
            f"<tr><td>{html.escape(d['source'])}</td><td>{'FAQ' if d['kind'] == 'faq' else 'document'}</td>"
            f"<td>{d['passages']}</td><td>{_size(d['size'])}</td>"
            f"<td>{'skipped: ' + html.escape(d['skipped']) if d['skipped'] else ''}</td></tr>" for d in docs)
        total = sum(d["passages"] for d in docs)
        return (f'<p>{len(docs)} file{"s" * (len(docs) != 1)}, {total} passages</p><table class="dh-docs">'
                "<thead><tr><th>Document</th><th>Kind</th><th>Passages</th><th>Size</th><th></th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")

    @staticmethod
    def notice(done: list[str], failed: list[str]) -> str:
        """What happened, a line each; a failure as its message and fix (never a traceback)."""
        lines = [f'<p class="dh-ok">{html.escape(line)}</p>' for line in done]
        lines += [f'<p class="dh-error" style="color: var(--error-text-color, #b91c1c)">{line}</p>'
                  for line in failed]
        return "".join(lines)


def _size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.1f} kB" if size < 1_000_000 else f"{size / 1e6:.1f} MB"


def _failure(what: str, name: str, e: Exception) -> str:
    """One failed upload or delete as the notice says it (HTML, escaped): what failed, for which file
    (unless the message names it), why, and the fix."""
    if isinstance(e, LLMError):
        message = e.message.rstrip(".")
        fix = f" <b>Fix:</b> {html.escape(e.fix.rstrip('.'))}." if e.fix else ""
    elif isinstance(e, OSError):
        message, fix = f"the file could not be read ({e.strerror or e})", ""
    else:
        log.exception("unexpected failure in the knowledge panel")
        message, fix = f"unexpected error: {type(e).__name__}: {e}", ""
    if name and name not in message:
        message = f"{name}: {message}"
    return f"<b>{html.escape(what)}:</b> {html.escape(message)}.{fix}"


def _listing(router: Router) -> tuple[str, Any]:
    """The documents table and the Delete choices (the documents, not the FAQ file): blocking."""
    try:
        docs = router.knowledge.documents()
    except Exception as e:      # a shared store that is down: say so where the list would be
        return Documents.notice([], [_failure("The documents could not be listed", "", e)]), \
            gr.update(choices=[], value=None)
    choices = [d["source"] for d in docs if d["kind"] == "doc"]
    return Documents.table(docs), gr.update(choices=choices, value=None)


async def list_documents(router: Router) -> tuple[str, Any]:
    """Page load: the documents (the index is brought up to date first: disk I/O, off the loop)."""
    return await asyncio.to_thread(_listing, router)


def _upload(router: Router, files: Any) -> tuple[list[str], list[str]]:
    done, failed = [], []
    for f in [files] if isinstance(files, (str, Path)) else files or []:
        name = Path(str(f)).name
        try:
            found = router.knowledge.upload(name, Path(str(f)).read_bytes())
        except Exception as e:
            failed.append(_failure("Not added", name, e))
        else:
            done.append(f"Added {name}: {found} passage{'s' * (found != 1)}.")
    return done, failed


async def upload_documents(router: Router, files: Any) -> tuple[str, str, Any, None]:
    """Upload: add (or replace) each file in the knowledge, indexed at once. Returns the notice, the
    documents table, the Delete choices and the emptied upload box."""
    if not files:
        return gr.skip(), gr.skip(), gr.skip(), None
    done, failed = await asyncio.to_thread(_upload, router, files)
    table, choices = await asyncio.to_thread(_listing, router)
    return Documents.notice(done, failed), table, choices, None


def _delete(router: Router, name: str | None) -> tuple[list[str], list[str]]:
    if not name:
        return [], ["Choose a document to delete first."]
    try:
        router.knowledge.delete(name)
    except Exception as e:
        return [], [_failure("Not deleted", name, e)]
    return [f"Deleted {name}."], []


async def delete_document(router: Router, name: str | None) -> tuple[str, str, Any]:
    """Delete: remove the chosen document from the knowledge. Returns the notice, the table and choices."""
    done, failed = await asyncio.to_thread(_delete, router, name)
    table, choices = await asyncio.to_thread(_listing, router)
    return Documents.notice(done, failed), table, choices


def without_sources(history: list[dict]) -> list[dict]:
    """The chat as the model reads it: each reply without the sources folded under it."""
    return [{**m, "content": SOURCES_FOLD.sub("", m["content"])}
            if m["role"] == "assistant" and isinstance(m.get("content"), str) else m for m in history]


def sources_html(sources: list[dict]) -> str:
    """The sources a reply used, folded under it ("file — text (score)", best first); "" when none.
    Everything in it is escaped, on one line: a blank line would end Markdown's HTML block."""
    if not sources:
        return ""
    items = []
    for s in sources:
        text = " ".join(str(s.get("text", "")).split())
        text = text if len(text) <= SOURCE_CHARS else text[:SOURCE_CHARS - 1] + "…"
        items.append(f"<li><b>{html.escape(str(s.get('source', '')))}</b> — {html.escape(text)} "
                     f"({float(s.get('score') or 0):.2f})</li>")
    return (f'\n\n<details class="dh-sources"><summary>Sources ({len(sources)})</summary>'
            f"<ul>{''.join(items)}</ul></details>")
