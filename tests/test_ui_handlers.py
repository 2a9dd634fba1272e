"""The web page's handlers, driven directly: real Router, loopback OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from dataclasses import replace
from itertools import pairwise

import gradio as gr
import pytest

from configs import PRESETS, ProviderConfig, Settings
from llm import ui_handlers as ui
from llm import ui_knowledge as kb_ui
from llm import ui_page
from llm.knowledge import INDEX_NAME
from llm.router import Router
from tests.fake_servers import FakeOpenAIServer, refused_url
from tests.test_knowledge import TOILETS, knowledge_folder

LONG_REPLY = "这是一个很长的回答，用来测试停止按钮。" * 10     # 190 one-character chunks


def make_router(base_url: str, **extra: ProviderConfig) -> Router:
    """direct + 'fast' (the fake server) + 'down' (nothing listening) + the cloud presets, no keys."""
    providers = dict(PRESETS)
    providers["fast"] = ProviderConfig("fast", "openai", "fake-model", label="Fake Cloud", base_url=base_url)
    providers["down"] = ProviderConfig("down", "openai", "fake-model", label="Down", base_url=refused_url("/v1"))
    providers.update(extra)
    return Router(Settings(providers=providers), env={})


def run_turn(router: Router, message: str, provider: str, history=None, *, style: bool = False,
             progress=None, on_update=None, knowledge: bool = True) -> tuple[list, list]:
    """Send `message` as the page does; returns (every update yielded, the turn's final history)."""
    _, history, turn = ui.start_turn(message, history or [])
    opts = ui.TurnOptions(provider, style=style, max_seconds=5, temperature=0.7, top_p=0.9, max_new_tokens=64,
                          knowledge=knowledge)

    async def collect():
        updates = []
        async for update in ui.respond(router, history, opts, turn, progress):
            updates.append(update)
            if on_update:
                on_update(len(updates), turn)
        return updates

    updates = asyncio.run(collect())
    return updates, (updates[-1][0] if updates else history)


@pytest.fixture
def server():
    with FakeOpenAIServer(replies=["Hello there. 你好！"], chunk_delay=0.01) as s:
        yield s


def let_go(fake: FakeOpenAIServer, seconds: float = 5.0) -> bool:
    """Whether the fake server ended every connection within `seconds`: it does once a client closes
    its stream (a stream left open goes on, then idles in the client's pool)."""
    deadline = time.monotonic() + seconds
    while fake._connections and time.monotonic() < deadline:
        time.sleep(0.01)
    return not fake._connections


@pytest.fixture
def router(server):
    r = Router(make_router(server.base_url).settings, env={})
    yield r
    r.close()


def test_streaming_yields_growing_partial_replies(router):
    updates, history = run_turn(router, "hi", "fast")
    replies = [u[0][-1]["content"] for u in updates]
    assert len(replies) > 3, "the reply should arrive in pieces, not as one finished text"
    assert all(b.startswith(a) and len(b) >= len(a) for a, b in pairwise(replies))
    assert history[-1] == {"role": "assistant", "content": "Hello there. 你好！"}
    assert "Answered by **Fake Cloud**" in updates[-1][1]
    assert all(u[2] == gr.skip() for u in updates), "the input box stays as the user left it"


def test_chinese_message_through_direct_comes_back_unchanged(router):
    message = "你好，数字人！今天天气怎么样？"
    _, history = run_turn(router, message, "direct", style=True)
    assert history == [{"role": "user", "content": message}, {"role": "assistant", "content": message}]


def test_stop_cancels_generation_and_keeps_the_partial_reply():
    with FakeOpenAIServer(replies=[LONG_REPLY], chunk_delay=0.02) as slow:
        router = make_router(slow.base_url)

        def stop_early(count, turn):
            if count == 5:
                ui.stop(turn)

        updates, history = run_turn(router, "讲个故事", "fast", on_update=stop_early)
        assert let_go(slow), "the stopped stream was left open"
        partial = history[-1]["content"]
        assert 0 < len(partial) < len(LONG_REPLY) and LONG_REPLY.startswith(partial)
        assert slow.chunks_sent < len(LONG_REPLY) // 3, slow.chunks_sent
        assert updates[-1][1].startswith("Stopped.")
        router.close()


def test_an_upstream_error_is_the_notice_and_keeps_history_without_a_fake_reply(router):
    before = [{"role": "user", "content": "早上好"}, {"role": "assistant", "content": "早上好！"}]
    _, history, turn = ui.start_turn("still there?", before)
    opts = ui.TurnOptions("down", style=False)
    updates = []

    async def collect():
        async for update in ui.respond(router, history, opts, turn):
            updates.append(update)

    asyncio.run(collect())
    notice = ui.report(turn, router, "down")
    assert notice.startswith("**Not answered:**") and "cannot reach" in notice and "check base_url" in notice
    assert ui.report(turn, router, "direct") == gr.skip()    # another provider was chosen since: not its notice
    chat, status, textbox, _ = updates[-1]
    assert chat == before, "the failed turn leaves no assistant message and loses no history"
    assert textbox == "still there?", "the question goes back into the input box for a retry"
    assert status == "", "the error is said once, in the notice"


def test_fallback_names_the_provider_that_answered(server):
    settings = make_router(server.base_url).settings
    providers = dict(settings.providers)
    providers["down"] = ProviderConfig("down", "openai", "m", label="Down", base_url=refused_url("/v1"),
                                       fallback=("fast",))
    router = Router(Settings(providers=providers), env={})
    updates, history = run_turn(router, "hi", "down")
    assert history[-1]["content"] == "Hello there. 你好！"
    assert "Answered by **Fake Cloud** (fallback: Down was unavailable)" == updates[-1][1]


def test_sessions_are_independent(server):
    """Two sessions' states run side by side; stopping one leaves the other's turn and history alone."""
    with FakeOpenAIServer(replies=[LONG_REPLY], chunk_delay=0.01) as slow:
        router = make_router(server.base_url, slow=ProviderConfig("slow", "openai", "m", base_url=slow.base_url))
        _, hist_a, turn_a = ui.start_turn("A 的问题", [])
        _, hist_b, turn_b = ui.start_turn("B's question", [{"role": "user", "content": "earlier"},
                                                          {"role": "assistant", "content": "reply"}])
        assert turn_a is not turn_b

        async def session(history, provider, turn, stop_after=None):
            last = None
            async for i, update in _enumerate(ui.respond(router, history, ui.TurnOptions(provider, style=False),
                                                         turn)):
                last = update
                if i == stop_after:
                    ui.stop(turn)
            return last[0]

        async def both():
            return await asyncio.gather(session(hist_a, "slow", turn_a, stop_after=3),
                                        session(hist_b, "slow", turn_b))

        final_a, final_b = asyncio.run(both())
        assert turn_a.stopped and not turn_b.stopped
        assert len(final_a[-1]["content"]) < len(LONG_REPLY)
        assert final_b[-1]["content"] == LONG_REPLY
        assert [m["content"] for m in final_b[:3]] == ["earlier", "reply", "B's question"]
        assert all("A 的问题" != m["content"] for m in final_b)
        router.close()


def test_a_busy_single_slot_model_does_not_hold_up_other_providers(server):
    """Like a local model (one generation at a time): a second user waits for it, a cloud user does not."""
    with FakeOpenAIServer(replies=["一次只能回答一个人的问题。" * 4], chunk_delay=0.01) as single:
        router = make_router(server.base_url, single=ProviderConfig("single", "openai", "m", max_concurrency=1,
                                                                    base_url=single.base_url))
        events: list[tuple[str, str, float]] = []

        async def session(name, provider, delay=0.0):
            await asyncio.sleep(delay)
            _, history, turn = ui.start_turn(f"{name} 的问题", [])
            async for _ in ui.respond(router, history, ui.TurnOptions(provider, style=False), turn):
                events.append((name, "update", time.monotonic()))
            events.append((name, "done", time.monotonic()))

        async def all_three():
            await asyncio.gather(session("A", "single"), session("B", "single", 0.1),
                                 session("C", "fast", 0.1))

        asyncio.run(all_three())
        at = {(n, kind): t for n, kind, t in events if kind == "done"}
        first = {n: min(t for m, kind, t in events if m == n) for n in "ABC"}
        assert at[("C", "done")] < at[("A", "done")], "the cloud turn finished while the model was busy"
        assert first["B"] >= at[("A", "done")] - 0.05, "the second turn on the model waited for its slot"
        router.close()


async def _enumerate(agen):
    i = 0
    async for item in agen:
        i += 1
        yield i, item


def test_not_ready_provider_says_why_and_how_to_fix(router, recwarn):
    note, *_ = ui.choose_provider(router, "chatgpt")
    assert not recwarn.list          # the note only: no gr.Warning toast to pile up over the dropdown
    assert note.startswith("**OpenAI ChatGPT** is not ready: OPENAI_API_KEY is not set.")
    # the command alone in a block to copy, the restart it needs, the alternative as prose
    assert "```bash\nexport OPENAI_API_KEY=...\n```\n then restart `python webui.py`." in note
    assert "Or set api_key_env in configs.yaml." in note
    labels = dict((name, label) for label, name in ui.provider_choices(router))
    assert labels["chatgpt"] == "OpenAI ChatGPT — not ready"
    assert labels["direct"] == "Direct Reply — ready"


def test_not_ready_provider_fails_the_turn_with_the_fix(router):
    turns = []
    updates, history = run_turn(router, "hello", "chatgpt", on_update=lambda _, turn: turns.append(turn))
    assert history == [] and updates[-1][2] == "hello"
    assert ui.report(None, router, "chatgpt") == gr.skip()     # an empty Send has no turn: nothing to report
    assert "export OPENAI_API_KEY" in ui.report(turns[-1], router, "chatgpt")


def test_choosing_a_provider_sets_its_sampling_defaults(router):
    _, temperature, top_p, tokens = ui.choose_provider(router, "linly")   # not downloaded: still its values
    assert (temperature, top_p) == (1.0, 0.84) and tokens == ui.DEFAULT_SAMPLING["max_new_tokens"]


def test_empty_message_starts_no_turn(router):
    textbox, history, turn = ui.start_turn("   ", [{"role": "user", "content": [{"type": "text", "text": "x"}]},
                                                   {"role": "assistant", "content": "y"}])
    assert turn is None and history == [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    updates, _ = run_turn(router, "", "direct")
    assert updates == []


def test_clear_stops_the_turn_and_empties_the_chat():
    turn = ui.Turn()
    assert ui.clear(turn) == ([], "", ui.Sayings.NONE, None)
    assert turn.cancelled and turn.stopped


def test_clear_mid_stream_stops_generation_and_never_writes_to_the_chat_again():
    with FakeOpenAIServer(replies=[LONG_REPLY], chunk_delay=0.02) as slow:
        router = make_router(slow.base_url)
        cleared_at = []

        def clear_early(count, turn):
            if count == 5:
                ui.clear(turn)
                cleared_at.append(count)

        updates, _ = run_turn(router, "讲个故事", "fast", on_update=clear_early)
        assert let_go(slow), "the cleared stream was left open"
        assert cleared_at == [5] and len(updates) == 5     # nothing after the Clear
        assert slow.chunks_sent < len(LONG_REPLY) // 3, slow.chunks_sent
        router.close()


def test_api_curl_uses_the_real_port_and_never_the_key():
    curl = ui.api_curl(7999, "s3cret-key", "qwen", host="0.0.0.0")
    assert "http://127.0.0.1:7999/" in curl and '"provider": "qwen"' in curl
    assert "Authorization: Bearer $LLM_API_KEY" in curl and "s3cret-key" not in curl
    assert "Authorization" not in ui.api_curl(7871, None)


def test_local_model_shows_progress_only_the_first_time(tmp_path, server):
    pytest.importorskip("transformers")
    from tests.tiny_models import build_llama

    path = build_llama(tmp_path / "tiny")
    router = make_router(server.base_url, tiny=ProviderConfig("tiny", "local", str(path), label="Tiny",
                                                              device="cpu"))
    assert "loads on the first message" in ui.provider_note(router, "tiny")
    calls = []
    updates, history = run_turn(router, "你好", "tiny", progress=lambda f, desc="": calls.append((f, desc)))
    assert calls and calls[-1][0] == 1.0 and "Tiny" in calls[-1][1]
    assert history[-1]["role"] == "assistant" and history[-1]["content"]
    calls.clear()
    run_turn(router, "again", "tiny", progress=lambda f, desc="": calls.append((f, desc)))
    assert calls == []
    router.close()


def test_build_demo_wires_the_page(router):
    import webui

    demo = webui.build_demo(router, api_port=7999, api_key="k")
    assert isinstance(demo, gr.Blocks)
    chat = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "respond"]
    assert chat and chat[0].concurrency_limit == ui_page.CHAT_CONCURRENCY


def test_a_provider_cooling_down_says_so_and_its_fallback_answers():
    with FakeOpenAIServer(faults=["hang"]) as fake:
        hung = ProviderConfig("hung", "openai", "fake-model", label="Hung", base_url=fake.base_url,
                              first_token_timeout=0.3, fallback=("direct",))
        router = make_router(refused_url("/v1"), hung=hung)
        _, first = run_turn(router, "你好", "hung")
        assert first[-1]["content"] == "你好"       # Direct Reply answered after one timeout
        labels = dict((name, label) for label, name in ui.provider_choices(router))
        note = ui.provider_note(router, "hung")
        router.close()
    assert labels["hung"] == "Hung — cooling down"
    assert "cooling down" in note and "s left" in note and "no reply within 0.3 s" in note


def test_a_new_message_retires_the_turn_still_running():
    previous = ui.Turn()
    textbox, history, turn = ui.start_turn("第二个问题", [{"role": "user", "content": "第一个问题"},
                                                    {"role": "assistant", "content": "回答。"}], previous)
    assert previous.cancelled and previous.cleared          # it may not overwrite the chat any more
    assert turn is not previous and not turn.cancelled and textbox == ""
    assert history[-1] == {"role": "user", "content": "第二个问题"}
    finished = ui.Turn()
    finished.done = True
    ui.start_turn("再问", [], finished)
    assert not finished.cancelled


def test_the_avatar_is_given_each_sentence_as_the_tts_should_say_it(router):
    updates, _ = run_turn(router, "今天气温25℃。明天下雨", "direct")
    sayings = json.loads(re.sub("<[^>]+>", "", html.unescape(updates[-1][3])))
    # with how long each takes to say: the avatar mouths it that long where there is no voice
    assert sayings == [{"sentence": "今天气温25℃。", "speech": "今天气温二十五摄氏度。", "emotion": None, "seconds": 2.0},
                       {"sentence": "明天下雨", "speech": "明天下雨", "emotion": None, "seconds": 0.8}]   # the unfinished one at the end


def test_errors_on_the_page_name_providers_by_their_labels(router):
    message = "all 2 providers failed: fast: the server answered 500; down: cannot reach it"
    assert ui.with_labels(router, message) == ("all 2 providers failed: Fake Cloud: the server answered 500; "
                                               "Down: cannot reach it")
    assert ui.with_labels(router, "Down (down) is not ready: x") == "Down (down) is not ready: x"


# ---- the knowledge: the toggle, the sources under a reply, the documents panel -------------------------

FOLD = re.compile(r'<details class="dh-sources"><summary>Sources \((\d+)\)</summary><ul>(.*)</ul></details>$')
METEORITES = "# 陨石展厅\n\n陨石展厅在二楼北侧，展出一块重达三百公斤的铁陨石，观众可以亲手触摸。\n"


@pytest.fixture
def knowing(server, tmp_path):
    """The ui router with the knowledge of a copy of the test corpus; (router, its docs folder)."""
    settings = replace(make_router(server.base_url).settings, knowledge=knowledge_folder(tmp_path))
    r = Router(settings, env={})
    yield r, tmp_path / "docs"
    r.close()


def fold(content: str) -> tuple[str, int, list[str]]:
    """A reply's content as (the text, the number of sources, each source's line without its tags)."""
    text, _, folded = content.partition("\n\n<details")
    match = FOLD.match("<details" + folded)
    assert match, content
    items = re.findall(r"<li>(.*?)</li>", match.group(2))
    return text, int(match.group(1)), [html.unescape(re.sub("<[^>]+>", "", i)) for i in items]


def documents(router) -> tuple[str, list[str]]:
    table, choices = asyncio.run(kb_ui.list_documents(router))
    return table, choices["choices"]


def test_an_faq_answer_shows_its_sources_folded_and_the_avatar_says_only_the_answer(knowing, server):
    router, _ = knowing
    asked = len(server.requests)
    updates, history = run_turn(router, "洗手间在哪", "fast", style=True)
    text, count, lines = fold(history[-1]["content"])
    assert text == TOILETS and count == 1 and lines == ["faq.csv — 洗手间在哪 (1.00)"]
    assert len(server.requests) == asked, "an FAQ answer asks no model"
    assert updates[-1][1] == "Answered from the **knowledge** (no model was asked)"
    sayings = json.loads(html.unescape(re.sub("<[^>]+>", "", updates[-1][3])))
    assert [s["sentence"] for s in sayings] == [TOILETS] and "Sources" not in updates[-1][3]

    # The next turn's history reaches the model without the fold under the earlier reply.
    run_turn(router, "还有别的吗？", "fast", history=history, knowledge=False)
    sent = [m for m in server.requests[-1]["messages"] if m["role"] == "assistant"]
    assert sent == [{"role": "assistant", "content": TOILETS}]


def test_with_the_toggle_off_the_faq_question_goes_to_the_model_with_no_sources(knowing, server):
    router, _ = knowing
    asked = len(server.requests)
    updates, history = run_turn(router, "洗手间在哪", "fast", knowledge=False)
    assert history[-1]["content"] == "Hello there. 你好！"          # no fold: nothing was looked up
    assert len(server.requests) == asked + 1 and "Fake Cloud" in updates[-1][1]
    assert all("资料" not in m["content"] for m in server.requests[-1]["messages"])


def test_sources_are_escaped_clipped_and_kept_on_one_line():
    evil = [{"source": "<img src=x onerror=alert(1)>.md", "kind": "doc", "score": 0.5,
             "text": "a & b </details><script>x()</script>\n\n" + "长" * 300},
            {"source": "faq.csv", "kind": "faq", "text": "洗手间在哪", "score": 1}]
    folded = kb_ui.sources_html(evil)
    assert "<img" not in folded and "<script" not in folded and folded.count("</details>") == 1
    assert "&lt;img src=x onerror=alert(1)&gt;.md" in folded and "a &amp; b &lt;/details&gt;" in folded
    assert "\n" not in folded.strip()
    _, count, lines = fold("answer" + folded)
    clipped = lines[0].removeprefix("<img src=x onerror=alert(1)>.md — ").removesuffix(" (0.50)")
    assert len(clipped) == kb_ui.SOURCE_CHARS and clipped.endswith("长长…") and clipped.startswith("a & b </details>")
    assert count == 2 and lines[1] == "faq.csv — 洗手间在哪 (1.00)"
    assert kb_ui.sources_html([]) == ""
    assert kb_ui.without_sources([{"role": "assistant", "content": "answer" + folded}]) == \
        [{"role": "assistant", "content": "answer"}]


def test_an_uploaded_document_is_listed_and_grounds_the_answer(knowing, server, tmp_path):
    router, docs = knowing
    _, unknown = run_turn(router, "陨石展厅在哪里？", "fast")
    assert "meteorites.md" not in unknown[-1]["content"]
    upload = tmp_path / "upload" / "meteorites.md"
    upload.parent.mkdir()
    upload.write_text(METEORITES, encoding="utf-8")
    notice, table, choices, emptied = asyncio.run(kb_ui.upload_documents(router, [str(upload)]))
    assert notice == '<p class="dh-ok">Added meteorites.md: 1 passage.</p>' and emptied is None
    assert "<td>meteorites.md</td><td>document</td><td>1</td>" in table
    assert "meteorites.md" in choices["choices"] and "faq.csv" not in choices["choices"]
    assert (docs / "meteorites.md").read_text(encoding="utf-8") == METEORITES
    assert "<td>faq.csv</td><td>FAQ</td>" in documents(router)[0]

    _, history = run_turn(router, "陨石展厅在哪里？", "fast")
    text, _, lines = fold(history[-1]["content"])
    assert text == "Hello there. 你好！" and lines[0].startswith("meteorites.md — 陨石展厅在二楼北侧")
    assert "三百公斤的铁陨石" in server.requests[-1]["messages"][0]["content"]


@pytest.mark.parametrize("name, data, says", [
    ("empty.md", b"", "empty.md: no text in it. Fix: upload a text document in UTF-8."),
    ("photo.md", bytes(range(256)) * 8, "photo.md: binary data, not text. Fix: upload a text document in UTF-8."),
    ("setup.exe", b"MZ text", "'setup.exe' is not a kind of document the knowledge reads. Fix: upload .md, .txt "
                              "or .html (.pdf, .docx with their parser installed)."),
    (".hidden.md", b"# Hi\n\nthere", "'.hidden.md' is not a usable document name. Fix: use a plain file name "
                                     "such as tickets.md."),
])
def test_a_bad_upload_says_what_is_wrong_and_how_to_fix_it_and_stores_nothing(knowing, tmp_path, name, data,
                                                                               says):
    router, docs = knowing

    def stored():   # the documents' files (not the index beside them, nor its journal)
        return {p: p.read_bytes() for p in docs.rglob("*") if p.is_file() and not p.name.startswith(INDEX_NAME)}

    before_files, before = stored(), documents(router)
    path = tmp_path / "upload" / name
    path.parent.mkdir()
    path.write_bytes(data)
    notice, table, _, _ = asyncio.run(kb_ui.upload_documents(router, [str(path)]))
    said = html.unescape(re.sub("<[^>]+>", "", notice))
    assert said == f"Not added: {says}"
    assert "dh-error" in notice and "Traceback" not in notice and "Added" not in notice
    assert stored() == before_files and (table, documents(router)[1]) == before


def test_a_bad_upload_beside_a_good_one_leaves_the_good_one_in(knowing, tmp_path):
    router, _ = knowing
    (tmp_path / "up").mkdir()
    good, bad = tmp_path / "up" / "note.txt", tmp_path / "up" / "blank.txt"
    good.write_text("The cloakroom is next to the main entrance.", encoding="utf-8")
    bad.write_bytes(b"  \n ")
    notice, _, choices, _ = asyncio.run(kb_ui.upload_documents(router, [str(good), str(bad)]))
    assert re.sub("<[^>]+>", "", notice) == ("Added note.txt: 1 passage.Not added: blank.txt: no text in it. "
                                             "Fix: upload a text document in UTF-8.")
    assert "note.txt" in choices["choices"] and "blank.txt" not in choices["choices"]


def test_a_deleted_document_is_gone_from_the_list_the_folder_and_the_answers(knowing):
    router, docs = knowing
    assert "tickets.md" in documents(router)[1]
    notice, table, choices = asyncio.run(kb_ui.delete_document(router, "tickets.md"))
    assert notice == '<p class="dh-ok">Deleted tickets.md.</p>'
    assert "tickets.md" not in table and "tickets.md" not in choices["choices"] and choices["value"] is None
    assert not (docs / "tickets.md").exists()
    assert all(h.passage.source != "tickets.md" for h in router.knowledge.search("门票 票价 成人票 预约"))

    again, _, _ = asyncio.run(kb_ui.delete_document(router, "tickets.md"))
    assert html.unescape(re.sub("<[^>]+>", "", again)) == ("Not deleted: there is no document 'tickets.md'. "
                                                           "Fix: see the list of documents.")
    assert "dh-error" in again
    nothing, _, _ = asyncio.run(kb_ui.delete_document(router, None))
    assert "Choose a document to delete first." in nothing


def test_the_knowledge_toggle_and_panel_are_on_the_page_only_when_it_is_configured(router, knowing):
    import webui

    def parts(r):
        demo = webui.build_demo(r, api_port=7999)
        return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    plain, known = parts(router), parts(knowing[0])
    assert not plain["use-knowledge"].visible and "knowledge-panel" not in plain
    assert known["use-knowledge"].visible and known["use-knowledge"].value is True
    assert {"knowledge-panel", "knowledge-docs", "knowledge-upload", "knowledge-delete"} <= set(known)
    assert set(known["knowledge-upload"].file_types) == {".md", ".markdown", ".txt", ".html", ".htm", ".pdf",
                                                         ".docx"}
