"""Documents into passages: each file read by its kind, cut at headings and paragraphs, bad files skipped.

A passage keeps its file (relative to the folder) and the headings above it, so a reply can cite it and a
question that names a section finds it."""

from __future__ import annotations

import csv
import html.parser
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 20_000_000     # a bigger file is skipped: it is an export or a dump, not a help-desk page
MAX_PASSAGE_CHARS = 360         # paragraphs under one heading are joined up to this; a longer one is cut
TEXT_KINDS = (".md", ".markdown", ".txt", ".html", ".htm")
PARSED_KINDS = {".pdf": "pypdf", ".docx": "docx"}   # read when their parser is installed
_SENTENCE = re.compile(r"(?<=[。！？!?；;])|(?<=\.)\s+")


@dataclass(frozen=True)
class Passage:
    source: str     # the file, relative to the documents folder (or the FAQ file's name)
    title: str      # the headings above it, "Tickets > Discounts"
    text: str

    @property
    def searchable(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text


class Unreadable(Exception):
    """A file that is skipped, and why (logged, never raised to a caller)."""


def readable(path: Path) -> bool:
    """Whether `path` is a kind of document this module reads (hidden files and our own index are not)."""
    return not path.name.startswith((".", "~$")) and (
        path.suffix.lower() in TEXT_KINDS or path.suffix.lower() in PARSED_KINDS)


def passages(path: Path, source: str, data: bytes | None = None) -> list[Passage]:
    """The passages of one document (its bytes may be given: an upload, a file from a shared store).
    Raises Unreadable with the reason for a file to skip."""
    if data is None:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise Unreadable(f"{size / 1e6:.0f} MB is over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
        data = path.read_bytes()
    elif len(data) > MAX_FILE_BYTES:
        raise Unreadable(f"{len(data) / 1e6:.0f} MB is over the {MAX_FILE_BYTES / 1e6:.0f} MB limit")
    kind = path.suffix.lower()
    if kind in PARSED_KINDS:
        sections = _parsed(kind, data)
    else:
        text = decode(data)
        sections = _html_sections(text) if kind in (".html", ".htm") else _text_sections(
            text, markdown=kind in (".md", ".markdown"))
    found = [Passage(source, title, piece) for title, paragraphs in sections for piece in _joined(paragraphs)]
    if not found:
        raise Unreadable("no text in it")
    return found


def decode(data: bytes) -> str:
    """Text from bytes: UTF-8 (with or without a BOM), else GB18030 (Chinese Windows files). A binary
    file or UTF-8 with broken bytes is Unreadable: its text would be garbage the avatar might read out."""
    if b"\x00" in data[:8192]:
        raise Unreadable("binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        broken = data.decode("utf-8", errors="replace").count("\ufffd")
        if broken * 100 < len(data) // 3:   # mostly good UTF-8: a damaged file, not another encoding
            raise Unreadable(f"broken UTF-8 at byte {e.start}") from e
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as e:
        raise Unreadable("neither UTF-8 nor GB18030 text") from e


Sections = list[tuple[str, list[str]]]    # (heading path, its paragraphs)


def _text_sections(text: str, markdown: bool) -> Sections:
    sections: Sections = [("", [])]
    heads: list[str] = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [ln.strip() for ln in block.strip().split("\n") if ln.strip()]
        para: list[str] = []
        for line in lines:
            head = re.match(r"(#{1,6})\s+(.*?)\s*#*$", line) if markdown else None
            if head is None:
                para.append(_markdown_plain(line) if markdown else line)
                continue
            if para:
                sections[-1][1].append(" ".join(para))
                para = []
            heads = heads[:len(head.group(1)) - 1] + [_markdown_plain(head.group(2))]
            sections.append((" > ".join(h for h in heads if h), []))
        if para:
            sections[-1][1].append(_joined_lines(para))
    return sections


def _joined_lines(lines: list[str]) -> str:
    """Lines of one paragraph as one: Chinese lines join without a space."""
    out = lines[0]
    for line in lines[1:]:
        out += ("" if out[-1:] > "\u2e80" and line[:1] > "\u2e80" else " ") + line
    return out


def _markdown_plain(line: str) -> str:
    line = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", line)                 # images
    line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)             # links keep their words
    line = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "", line)             # list markers
    line = re.sub(r"^\s*>\s?", "", line)                             # quotes
    return re.sub(r"[*_`|]+", " ", line).strip()


class _HTMLText(html.parser.HTMLParser):
    SKIP = {"script", "style", "nav", "header", "footer", "noscript", "template", "svg", "form", "button"}
    BLOCKS = {"p", "li", "div", "section", "article", "tr", "td", "th", "dd", "dt", "br", "table", "ul",
              "ol", "blockquote", "pre", "main", "figcaption"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections: Sections = [("", [])]
        self.heads: list[str] = []
        self.buffer: list[str] = []
        self.skipping = 0
        self.heading: int | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self.heading = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.heading is not None:
            title = " ".join("".join(self.buffer).split())
            self.buffer = []
            self.heads = self.heads[:self.heading - 1] + [title]
            self.sections.append((" > ".join(h for h in self.heads if h), []))
            self.heading = None
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data):
        if not self.skipping:
            self.buffer.append(data)

    def _flush(self):
        if self.heading is not None:
            return
        text = " ".join("".join(self.buffer).split())
        self.buffer = []
        if text:
            self.sections[-1][1].append(text)


def _html_sections(text: str) -> Sections:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    return parser.sections


def _parsed(kind: str, data: bytes) -> Sections:
    """A PDF (pypdf) or Word file (python-docx): their paragraphs, by page or by heading style."""
    try:
        if kind == ".pdf":
            from pypdf import PdfReader

            pages = [page.extract_text() or "" for page in PdfReader(io.BytesIO(data)).pages]
            return [("", [p for page in pages for p in re.split(r"\n\s*\n", page) if p.strip()])]
        import docx

        sections: Sections = [("", [])]
        for para in docx.Document(io.BytesIO(data)).paragraphs:
            if para.style is not None and para.style.name.startswith("Heading") and para.text.strip():
                sections.append((para.text.strip(), []))
            elif para.text.strip():
                sections[-1][1].append(para.text.strip())
        return sections
    except ImportError as e:
        raise Unreadable(f"its parser is not installed: pip install {PARSED_KINDS[kind]}"
                         f"{'' if kind == '.pdf' else ' (python-docx)'}") from e
    except Exception as e:  # noqa: BLE001 - a damaged file of any kind is skipped, with the parser's reason
        raise Unreadable(f"cannot be parsed: {e}") from e


def _joined(paragraphs: list[str]) -> Iterator[str]:
    """Paragraphs joined up to MAX_PASSAGE_CHARS; a longer paragraph cut at sentence ends."""
    pieces = [piece for para in paragraphs for piece in _cut(para)]
    current = ""
    for piece in pieces:
        if current and len(current) + len(piece) + 1 > MAX_PASSAGE_CHARS:
            yield current
            current = ""
        current = f"{current}\n{piece}" if current else piece
    if current:
        yield current


def _cut(paragraph: str) -> list[str]:
    if len(paragraph) <= MAX_PASSAGE_CHARS:
        return [paragraph]
    out, current = [], ""
    for sentence in filter(None, _SENTENCE.split(paragraph)):
        if current and len(current) + len(sentence) > MAX_PASSAGE_CHARS:
            out.append(current)
            current = ""
        current += sentence
    return out + [current] if current else out


@dataclass(frozen=True)
class FaqEntry:
    questions: tuple[str, ...]      # the variants, the first as written
    answer: str


def faq_entries(data: bytes) -> list[FaqEntry]:
    """`question,answer` rows (a header row is optional); variants of a question split by "|". Raises
    Unreadable naming the row that is wrong."""
    text = decode(data)
    entries = []
    for i, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip() or (i == 1 and [c.strip().lower() for c in row[:2]]
                                                  == ["question", "answer"]):
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise Unreadable(f"row {i} needs a question and an answer (got {row!r:.80})")
        questions = tuple(q.strip() for q in row[0].split("|") if q.strip())
        entries.append(FaqEntry(questions, row[1].strip()))
    return entries
