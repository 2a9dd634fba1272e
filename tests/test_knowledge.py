"""Knowledge: FAQ answers without a model call, passages that reach the provider, sources in every reply,
an index that follows its folder, and bad files skipped. Over real HTTP against a fake OpenAI upstream."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from configs import KnowledgeConfig, ProviderConfig, Settings, load_settings
from llm.__main__ import main as cli
from llm.errors import ConfigError
from llm.knowledge import Knowledge
from llm.knowledge.docs import MAX_FILE_BYTES
from llm.router import Router
from tests.api_helpers import serve_router, sse_events
from tests.fake_servers import FakeOpenAIServer

DATA = Path(__file__).parent / "knowledge"
TOILETS = "每层楼的东西两端都有洗手间，家庭卫生间在一楼和三楼西侧。"     # faq.csv's answer to 洗手间在哪
WHALE = "13.6米的抹香鲸骨骼标本"                                        # in docs/exhibits/ocean.md


def knowledge_folder(root: Path) -> KnowledgeConfig:
    """A copy of the test corpus under `root`, and a config for it that looks at the folder every time."""
    shutil.copytree(DATA / "docs", root / "docs")
    shutil.copy(DATA / "faq.csv", root / "faq.csv")
    return KnowledgeConfig(docs=str(root / "docs"), faq=str(root / "faq.csv"), check_every=0)


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer(["好的，我知道了。"]) as server:
        yield server


@pytest.fixture(scope="module")
def served(fake, tmp_path_factory):
    cloud = ProviderConfig("cloud", "openai", "fake-model", base_url=fake.base_url)
    server = serve_router([cloud], default="cloud", knowledge=knowledge_folder(tmp_path_factory.mktemp("kb")))
    yield server
    server.stop()


def seed(served, **body) -> dict:
    reply = requests.post(served.url, json=body, timeout=20)
    assert reply.status_code == 200, reply.text
    return reply.json()


# ---- answers -------------------------------------------------------------------------------------

def test_an_faq_question_is_answered_word_for_word_without_calling_the_model(served, fake):
    before = len(fake.requests)
    body = seed(served, prompt="请问洗手间在哪？", max_chars=5)     # an authored answer is never cut
    assert body["response"] == TOILETS
    assert body["provider"] == "knowledge"
    assert [s["sentence"] for s in body["sentences"]] == [TOILETS]
    [source] = body["sources"]
    assert source["kind"] == "faq" and source["source"] == "faq.csv" and source["text"] == "洗手间在哪"
    assert len(fake.requests) == before


def test_passages_reach_the_provider_with_the_instruction_to_answer_only_from_them(served, fake):
    body = seed(served, prompt="抹香鲸骨骼标本有多长？")
    assert body["response"] == "好的，我知道了。" and body["provider"] == "cloud"
    assert body["sources"][0]["source"] == "exhibits/ocean.md" and body["sources"][0]["kind"] == "doc"
    assert WHALE in body["sources"][0]["text"]
    system = fake.requests[-1]["messages"][0]
    assert system["role"] == "system"
    assert "只根据下面的资料回答" in system["content"] and WHALE in system["content"]
    assert "exhibits/ocean.md" in system["content"]
    assert "请用少于" in system["content"]     # the speech style still applies
    assert fake.requests[-1]["messages"][-1] == {"role": "user", "content": "抹香鲸骨骼标本有多长？"}


def test_a_question_the_knowledge_cannot_answer_goes_to_the_model_as_usual(served, fake):
    body = seed(served, prompt="给我讲个关于月亮的故事")
    assert body["provider"] == "cloud" and body["sources"] == []
    assert "资料" not in fake.requests[-1]["messages"][0]["content"]


def test_knowledge_false_turns_it_off_for_one_request(served, fake):
    before = len(fake.requests)
    body = seed(served, prompt="洗手间在哪", knowledge=False)
    assert body["provider"] == "cloud" and body["sources"] == []
    assert len(fake.requests) == before + 1
    assert "资料" not in fake.requests[-1]["messages"][0]["content"]


def test_direct_reply_never_uses_the_knowledge(served, fake):
    body = seed(served, prompt="洗手间在哪", provider="direct")
    assert body["response"] == "洗手间在哪" and body["sources"] == []


def test_a_seed_stream_names_its_sources_in_the_done_event(served):
    with requests.post(served.url, json={"prompt": "洗手间在哪", "stream": True}, stream=True,
                       timeout=20) as reply:
        events = [data for _, data in sse_events(reply)]
    assert events[0]["sentence"] == TOILETS
    assert events[-1]["done"] is True and events[-1]["sources"][0]["text"] == "洗手间在哪"


def test_v1_replies_carry_sources_and_take_knowledge_through_extra_body(served, sdk, fake):
    reply = sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "洗手间在哪"}])
    assert reply.choices[0].message.content == TOILETS and reply.model == "knowledge"
    assert reply.sources[0]["kind"] == "faq"
    assert reply.usage.total_tokens == 0

    before = len(fake.requests)
    off = sdk.chat.completions.create(model="cloud", messages=[{"role": "user", "content": "洗手间在哪"}],
                                      extra_body={"knowledge": False})
    assert off.model == "cloud" and off.sources == [] and len(fake.requests) == before + 1

    chunks = list(sdk.chat.completions.create(
        model="cloud", stream=True, messages=[{"role": "user", "content": "抹香鲸骨骼标本有多长？"}]))
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][0]
    assert last.sources[0]["source"] == "exhibits/ocean.md"


def test_a_request_for_a_program_is_not_answered_from_the_faq(served, fake):
    before = len(fake.requests)
    reply = requests.post(f"{served.url}/v1/chat/completions", timeout=20, json={
        "model": "cloud", "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": "洗手间在哪"}]})
    assert reply.status_code == 200 and reply.json()["sources"] == []
    assert len(fake.requests) == before + 1


def test_a_bad_knowledge_flag_is_a_422(served):
    reply = requests.post(served.url, json={"prompt": "hi", "knowledge": "yes"}, timeout=20)
    assert reply.status_code == 422 and "knowledge" in reply.text


def test_on_miss_say_answers_the_miss_reply_without_a_model(tmp_path, fake):
    cloud = ProviderConfig("cloud", "openai", "fake-model", base_url=fake.base_url)
    knowledge = replace(knowledge_folder(tmp_path), on_miss="say")
    router = Router(Settings(providers={"cloud": cloud}, default="cloud", knowledge=knowledge), env={})
    before = len(fake.requests)
    try:
        zh, en = router.chat("明天青屿会下雨吗"), router.chat("Who won the World Cup in 2018?")
    finally:
        router.close()
    assert zh.text == knowledge.miss_reply["zh"] and en.text == knowledge.miss_reply["en"]
    assert zh.provider == "knowledge" and zh.sources == []
    assert len(fake.requests) == before


# ---- the index follows the folder ----------------------------------------------------------------

def test_the_index_follows_files_added_changed_and_removed_without_a_restart(tmp_path):
    knowledge = Knowledge(knowledge_folder(tmp_path))
    new = tmp_path / "docs" / "parrots.md"
    try:
        assert not any(h.passage.source == "parrots.md" for h in knowledge.search("鹦鹉馆在哪里"))
        new.write_text("# 鹦鹉馆\n\n鹦鹉馆位于五楼东侧，每天10:00有喂食表演。\n", encoding="utf-8")
        assert knowledge.search("鹦鹉馆在哪里")[0].passage.source == "parrots.md"
        new.write_text("# 鹦鹉馆\n\n鹦鹉馆搬到了六楼西侧。\n", encoding="utf-8")
        assert "六楼" in knowledge.search("鹦鹉馆在哪里")[0].passage.text
        new.unlink()
        assert not any(h.passage.source == "parrots.md" for h in knowledge.search("鹦鹉馆在哪里"))
    finally:
        knowledge.close()


def test_the_index_persists_beside_the_docs_and_is_not_rebuilt(tmp_path):
    config = knowledge_folder(tmp_path)
    first = Knowledge(config)
    assert first.refresh(force=True)["added"] == 21
    first.close()
    assert (tmp_path / "docs" / ".knowledge.sqlite3").is_file()
    again = Knowledge(config)
    try:
        assert again.refresh(force=True) == {"added": 0, "changed": 0, "removed": 0, "skipped": 0}
        assert again.search("洗手间在哪")[0].answer == TOILETS
    finally:
        again.close()


def test_bad_files_are_skipped_with_a_log_line_and_the_rest_is_indexed(tmp_path, caplog):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.md").write_text("# 开放时间\n\n本馆周二至周日开放。\n", encoding="utf-8")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02PNG" * 100)
    (docs / "empty.md").write_bytes(b"")
    (docs / "broken.txt").write_bytes("本馆周一闭馆，".encode() * 50 + b"\xe6\x9c")   # cut mid-character
    (docs / "gbk.txt").write_bytes("本馆提供免费寄存服务。".encode("gb18030"))        # a Windows file: read
    with open(docs / "huge.txt", "wb") as f:
        f.truncate(50_000_000)
    (docs / "script.html").write_text("<html><script>var secret='脚本内容';</script><nav>导航</nav>"
                                      "<h1>导览</h1><p>讲解器在服务台租借。</p></html>", encoding="utf-8")
    (docs / "picture.png").write_bytes(b"\x89PNG")      # not a document kind: not even looked at
    knowledge = Knowledge(KnowledgeConfig(docs=str(docs)))
    try:
        with caplog.at_level(logging.WARNING, logger="llm.knowledge"):
            counts = knowledge.refresh(force=True)
        assert counts == {"added": 3, "changed": 0, "removed": 0, "skipped": 4}
        logged = caplog.text
        for name, why in (("binary.txt", "binary"), ("empty.md", "no text"), ("broken.txt", "broken UTF-8"),
                          ("huge.txt", f"{MAX_FILE_BYTES / 1e6:.0f} MB limit")):
            assert f"skipped {name}: " in logged and why in logged
        assert knowledge.search("寄存")[0].passage.source == "gbk.txt"
        [page] = [h for h in knowledge.search("讲解器 导航 脚本") if h.passage.source == "script.html"]
        assert page.passage.title == "导览" and page.passage.text == "讲解器在服务台租借。"
    finally:
        knowledge.close()


# ---- configuration and commands ------------------------------------------------------------------

@pytest.mark.parametrize("section, complaint", [
    ("knowledge:\n  docs: nowhere\n", "knowledge.docs"),
    ("knowledge:\n  on_miss: shrug\n", "knowledge.on_miss"),
    ("knowledge:\n  faq_threshold: 2\n", "knowledge.faq_threshold"),
    ("knowledge:\n  miss_reply: {fr: Non}\n", "knowledge.miss_reply"),
    ("knowledge:\n  folder: docs\n", "knowledge.folder"),
])
def test_a_bad_knowledge_section_names_the_key_and_the_fix(tmp_path, section, complaint):
    path = tmp_path / "configs.yaml"
    path.write_text(section, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert complaint in str(caught.value) and str(path) in str(caught.value) and caught.value.fix


def test_paths_are_relative_to_the_config_file(tmp_path):
    knowledge_folder(tmp_path)
    (tmp_path / "configs.yaml").write_text("knowledge:\n  docs: docs\n  faq: faq.csv\n  miss_reply: 不知道。\n",
                                           encoding="utf-8")
    settings = load_settings(tmp_path / "configs.yaml", env={})
    assert settings.knowledge.docs == str(tmp_path / "docs") and settings.knowledge.enabled
    assert settings.knowledge.miss_reply == {"zh": "不知道。", "en": "不知道。"}


def test_kb_commands_index_search_stats_and_eval(tmp_path, capsys):
    knowledge_folder(tmp_path)
    config = tmp_path / "configs.yaml"
    config.write_text("knowledge:\n  docs: docs\n  faq: faq.csv\n", encoding="utf-8")
    assert cli(["kb", "index", "--config", str(config)]) == 0
    assert "added 21" in capsys.readouterr().out
    assert cli(["kb", "search", "洗手间在哪", "--config", str(config)]) == 0
    assert f"FAQ answer (no model call): {TOILETS}" in capsys.readouterr().out
    assert cli(["kb", "stats", "--config", str(config)]) == 0
    assert "documents      20" in capsys.readouterr().out
    assert cli(["kb", "eval", str(DATA / "eval_dev.csv"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "50 document, 22 FAQ and 22 off-topic questions" in out and "in the top 3" in out
    assert cli(["kb", "search", "--config", str(config)]) == 2
    assert cli(["kb", "eval", str(tmp_path / "missing.csv"), "--config", str(config)]) == 2


def test_kb_without_a_knowledge_section_says_what_to_set(tmp_path, capsys):
    (tmp_path / "configs.yaml").write_text("default: direct\n", encoding="utf-8")
    assert cli(["kb", "index", "--config", str(tmp_path / "configs.yaml")]) == 2
    assert "knowledge.docs" in capsys.readouterr().err


# ---- questions written for each passage, once, by the configured model ---------------------------

def test_questions_written_at_index_time_find_a_passage_the_visitor_words_miss(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "space.md").write_text("# 太空馆\n\n展厅中央陈列着一块重达3吨的铁陨石，2003年在鹤鸣山发现。\n",
                                   encoding="utf-8")
    (docs / "food.md").write_text("# 餐饮\n\n食堂在四楼南侧，供应午餐。\n", encoding="utf-8")
    config = tmp_path / "configs.yaml"
    # the passages are asked about in order: food.md, then space.md, then food.md changed
    with FakeOpenAIServer(["午饭在哪吃", "天上掉下来的石头在哪儿捡到的\n1. 那块大石头有多重", "食堂在几楼"]) as writer:
        config.write_text(f"default: direct\nproviders:\n  writer: {{kind: openai, model: m, base_url: "
                          f"{writer.base_url}}}\nknowledge:\n  docs: docs\n  questions: writer\n",
                          encoding="utf-8")
        settings = load_settings(config, env={})
        plain = Knowledge(replace(settings.knowledge, questions=None, index=str(tmp_path / "plain.sqlite3")))
        before = plain.search("天上掉下来的石头在哪儿捡到的")
        plain.close()
        router = Router(settings, env={})
        try:
            knowledge = router.knowledge
            knowledge.refresh(force=True)   # starts writing in the background: this waits for it
            knowledge.write_questions()
            assert knowledge.index.unasked() == [] and len(writer.requests) == 2
            prompt = writer.requests[1]["messages"][-1]["content"]
            assert "来访者可能会问" in prompt and "铁陨石" in prompt
            assert "请用少于" not in str(writer.requests[0]["messages"])      # no speech style for this
            after = knowledge.search("天上掉下来的石头在哪儿捡到的")
            assert after[0].passage.source == "space.md"
            assert after[0].score > max((h.score for h in before if h.passage.source == "space.md"), default=0)
        finally:
            router.close()
        again = Router(settings, env={})     # indexed anew: the questions are kept, nobody is asked again
        try:
            (tmp_path / "docs" / "food.md").write_text("# 餐饮\n\n食堂在四楼南侧。\n", encoding="utf-8")
            again.knowledge.refresh(force=True)
            again.knowledge.write_questions()
            assert len(writer.requests) == 3     # only the changed passage is asked about
            assert again.knowledge.search("天上掉下来的石头在哪儿捡到的")[0].passage.source == "space.md"
        finally:
            again.close()


def test_a_writer_that_is_down_leaves_the_index_answering(tmp_path, capsys):
    knowledge_folder(tmp_path)
    (tmp_path / "configs.yaml").write_text(
        "providers:\n  writer: {kind: openai, model: m, base_url: 'http://127.0.0.1:9/v1', retries: 0}\n"
        "knowledge:\n  docs: docs\n  faq: faq.csv\n  questions: writer\n", encoding="utf-8")
    assert cli(["kb", "index", "--config", str(tmp_path / "configs.yaml")]) == 0
    out = capsys.readouterr().out
    assert "added 21" in out and "questions written for 0 passages" in out
    assert cli(["kb", "search", "洗手间在哪", "--config", str(tmp_path / "configs.yaml")]) == 0
    assert TOILETS in capsys.readouterr().out


def test_other_ways_to_ask_an_faq_question_are_written_once_and_answer_word_for_word(tmp_path):
    (tmp_path / "faq.csv").write_text("question,answer\n老人票多少钱|老年人票价,60岁以上的老人免费参观。\n"
                                      "停车场在哪,停车场在地下一层。\n", encoding="utf-8")
    asked = "我妈六十多岁了进去收费吗\n老年人进馆要买票吗"
    with FakeOpenAIServer([asked, "停车位在哪儿"]) as writer:      # the entries in order: seniors, parking
        cloud = ProviderConfig("writer", "openai", "m", base_url=writer.base_url)
        settings = Settings(providers={"writer": cloud}, default="writer", knowledge=KnowledgeConfig(
            faq=str(tmp_path / "faq.csv"), questions="writer"))
        router = Router(settings, env={})
        try:
            knowledge = router.knowledge
            question = "我妈六十多岁了，进去收费吗？"
            before = len(writer.requests)
            assert knowledge.lookup(question).answer is None        # words alone: not this entry
            knowledge.write_questions()
            assert len(writer.requests) - before == 2                # one request per entry, not per variant
            prompts = [r["messages"][-1]["content"] for r in writer.requests]
            assert any("老人票多少钱" in p and "60岁以上的老人免费参观" in p and "不同说法" in p for p in prompts)
            found = knowledge.lookup(question)
            assert found.answer == "60岁以上的老人免费参观。"
            assert found.sources[0]["text"] == "老人票多少钱"           # named as the FAQ has it
        finally:
            router.close()
