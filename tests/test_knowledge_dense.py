"""Search by meaning: an embedding model finds the passage a visitor's words miss, the two rankings are
fused, vectors follow the folder, and a missing model leaves the word search answering."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from configs import KnowledgeConfig
from llm.__main__ import main
from llm.knowledge import Knowledge
from tests.fake_hub import FakeHub
from tests.tiny_models import build_meaning_embedder

MEANINGS = {"meteorite": "陨石天外来客流星", "food": "餐厅吃饭食堂午饭", "where": "在哪里位于楼层一二三四",
            "parrot": "鹦鹉鸟类百灵", "misc": "展品陈列馆请问有的"}
METEORITE = "流星陨石陈列在二楼。"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_meaning_embedder(tmp_path_factory.mktemp("embedder") / "meaning", MEANINGS)


def folder(root: Path) -> Path:
    docs = root / "docs"
    docs.mkdir(parents=True)
    (docs / "hall.md").write_text(f"# 陨石\n\n{METEORITE}\n", encoding="utf-8")
    (docs / "food.md").write_text("# 餐饮\n\n餐厅位于一楼。\n", encoding="utf-8")
    return docs


def test_meaning_finds_the_passage_that_shares_no_word_with_the_question(tmp_path, model):
    docs = folder(tmp_path)
    words_only = Knowledge(KnowledgeConfig(docs=str(docs), index=str(tmp_path / "words.sqlite3")))
    by_meaning = Knowledge(KnowledgeConfig(docs=str(docs), embedding=str(model), doc_similarity=0.75))
    try:
        assert not any(h.passage.text == METEORITE for h in words_only.search("天外来客在哪"))
        best = by_meaning.search("天外来客在哪")[0]
        assert best.passage.text == METEORITE and best.similarity > 0.75 and best.score < 0.5
        found = by_meaning.lookup("天外来客在哪")
        assert [p.text for p in found.passages] == [METEORITE]
        assert found.sources[0]["score"] == best.similarity      # the cosine, the higher of the two
        assert by_meaning.dense_status.startswith("on (")
    finally:
        words_only.close()
        by_meaning.close()


def test_vectors_follow_the_folder_and_a_new_model(tmp_path, model):
    docs = folder(tmp_path)
    knowledge = Knowledge(KnowledgeConfig(docs=str(docs), embedding=str(model), check_every=0))
    try:
        assert knowledge.search("百灵鸟")[0].passage.source != "birds.md"
        (docs / "birds.md").write_text("# 鸟\n\n鹦鹉馆在四楼。\n", encoding="utf-8")
        assert knowledge.search("百灵鸟")[0].passage.source == "birds.md"    # no shared word: by meaning
        db = knowledge.index._db()
        assert db.execute("SELECT count(*) FROM vectors").fetchone()[0] == 3
        other = build_meaning_embedder(tmp_path / "other", {**MEANINGS, "extra": "新"}, dims=8)
    finally:
        knowledge.close()
    again = Knowledge(KnowledgeConfig(docs=str(docs), embedding=str(other)))
    try:    # another model: every passage embedded again, with its vectors (8 numbers each)
        again.refresh(force=True)
        sizes = again.index._db().execute("SELECT length(vec) FROM vectors").fetchall()
        assert sizes == [(8 * 4,)] * 3
    finally:
        again.close()


def test_a_missing_model_leaves_the_word_search_and_says_how_to_get_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="llm.knowledge"):
        knowledge = Knowledge(KnowledgeConfig(docs=str(folder(tmp_path)), embedding="bge-small-zh"))
    try:
        assert "python -m llm download bge-small-zh" in knowledge.dense_status
        assert "python -m llm download bge-small-zh" in caplog.text
        assert knowledge.search("陨石在几楼")[0].passage.text == METEORITE
    finally:
        knowledge.close()


def test_download_fetches_an_embedding_model_by_its_name(tmp_path, model, monkeypatch, capsys):
    for var in ("HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    config = tmp_path / "configs.yaml"
    config.write_text("default: direct\n", encoding="utf-8")
    with FakeHub({"BAAI/bge-small-zh-v1.5": model}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert main(["--config", str(config), "download", "bge-small-zh"]) == 0
    out = capsys.readouterr().out
    assert "downloaded BAAI/bge-small-zh-v1.5" in out and "embedding: bge-small-zh" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    knowledge = Knowledge(KnowledgeConfig(docs=str(folder(tmp_path)), embedding="bge-small-zh"))
    try:
        assert knowledge.dense_status.startswith("on (bge-small-zh")
        assert knowledge.index.embedder.query_prefix == "为这个句子生成表示以用于检索相关文章："
    finally:
        knowledge.close()


def test_kb_eval_decides_as_the_lookup_does_with_the_cosines(tmp_path, model):
    from llm.knowledge import evaluate

    docs = folder(tmp_path)
    cases = [evaluate.Case("天外来客在哪", "doc", "hall.md", "陨石"), evaluate.Case("鹦鹉馆在哪", "miss")]
    config = KnowledgeConfig(docs=str(docs), embedding=str(model), doc_similarity=0.75)
    knowledge = Knowledge(config)
    try:
        report = evaluate.run(knowledge, cases)
        assert report.figures(config)["doc_grounded"] == 1.0            # by the cosine, as lookup
        assert report.figures(replace(config, doc_similarity=0.99))["doc_grounded"] == 0.0
        assert "doc_similarity 0.75" in evaluate.table(report, config)
        assert "faq_similarity doc_similarity" in " ".join(evaluate.sweep(report, config).split())
    finally:
        knowledge.close()
