"""Several API processes, one organisation's knowledge: documents in a real PostgreSQL server (started for
these tests), each process's own index following them; a store that goes away never empties an index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import KnowledgeConfig
from llm.errors import InvalidRequestError, NotReadyError
from llm.knowledge import Knowledge
from tests.postgres import binaries, postgres_server

ROOT = Path(__file__).resolve().parents[1]
PARROTS = "# 鹦鹉馆\n\n鹦鹉馆位于五楼东侧，每天10:00有喂食表演。\n".encode()

pytestmark = pytest.mark.skipif(binaries() is None, reason="needs PostgreSQL: apt-get install postgresql")


@pytest.fixture(scope="module")
def store():
    with postgres_server() as url:
        yield url


def process(root: Path, store: str) -> Knowledge:
    """One API process's knowledge: its own (empty) folder and index, the shared store."""
    (root / "docs").mkdir(parents=True)
    return Knowledge(KnowledgeConfig(docs=str(root / "docs"), check_every=0), store)


def test_a_document_uploaded_through_one_process_is_found_by_another(tmp_path, store):
    first = process(tmp_path / "a", store)
    try:
        assert first.upload("parrots.md", PARROTS) == 1
        assert not (tmp_path / "a" / "docs" / "parrots.md").exists()     # it went to the shared store
        config = tmp_path / "b" / "configs.yaml"
        (tmp_path / "b" / "docs").mkdir(parents=True)
        config.write_text("knowledge:\n  docs: docs\n", encoding="utf-8")
        other = subprocess.run([sys.executable, "-m", "llm", "kb", "search", "鹦鹉馆在哪里", "--config",
                                str(config)], cwd=ROOT, env={**os.environ, "LLM_STORE": store},
                               capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        assert "parrots.md: 鹦鹉馆位于五楼东侧" in other.stdout
        second = process(tmp_path / "c", store)
        try:
            second.delete("parrots.md")
        finally:
            second.close()
        assert not any(h.passage.source == "parrots.md" for h in first.search("鹦鹉馆在哪里"))
    finally:
        first.close()


def test_a_changed_document_is_indexed_again_everywhere(tmp_path, store):
    one, two = process(tmp_path / "a", store), process(tmp_path / "b", store)
    try:
        one.upload("hours.md", "# 开放时间\n\n本馆周二至周日开放。\n".encode())
        assert "周二" in two.search("什么时候开放")[0].passage.text
        one.upload("hours.md", "# 开放时间\n\n本馆每天开放，全年无休。\n".encode())
        assert "每天" in two.search("什么时候开放")[0].passage.text
        assert [d["source"] for d in two.documents()] == ["hours.md"]
        one.delete("hours.md")
    finally:
        one.close()
        two.close()


def test_bad_uploads_are_refused_and_nothing_is_stored(tmp_path, store):
    knowledge = process(tmp_path, store)
    try:
        for name, data, why in (("a.md", b"", "no text"), ("b.txt", b"\x00\x01PNG", "binary"),
                                ("../../etc/passwd.md", b"x", "not a usable document name"),
                                ("c.exe", b"text", "not a kind of document")):
            with pytest.raises(InvalidRequestError, match=why):
                knowledge.upload(name, data)
        with pytest.raises(InvalidRequestError, match="no document"):
            knowledge.delete("never-there.md")
        assert knowledge.documents() == []
    finally:
        knowledge.close()


def test_a_store_that_goes_away_leaves_the_index_answering(tmp_path, caplog):
    with postgres_server() as url:
        knowledge = process(tmp_path, url)
        knowledge.upload("parrots.md", PARROTS)
    try:    # the server is gone: the index keeps what it had, and says why it cannot update
        assert knowledge.search("鹦鹉馆在哪里")[0].passage.source == "parrots.md"
        assert "the PostgreSQL store" in caplog.text and "not updated" in caplog.text
        with pytest.raises(NotReadyError) as caught:
            knowledge.upload("more.md", PARROTS)
        assert "PostgreSQL" in caught.value.fix
    finally:
        knowledge.close()
