"""The OpenAPI document describes the real API (issue #9): a schema fuzzer finds no conformance failures.

schemathesis (a requirements-dev package) generates requests from /openapi.json, valid and invalid,
sends them to a served app (the echo provider "direct": no network, no models) and checks each response
against the document: status codes, bodies (JSON and event streams), headers, content types, auth.
Bounded by a fixed seed and example count (10-20 s per run); for a deeper run locally:

    OPENAPI_FUZZ_EXAMPLES=300 OPENAPI_FUZZ_SEED=random .venv/bin/python -m pytest tests/test_openapi.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from api_helpers import serve_router, sse_events

from llm.api.openapi import openapi_document

pytest.importorskip("schemathesis")     # requirements-dev.txt; brings jsonschema_rs, used below too
import jsonschema_rs  # noqa: E402
from schemathesis.specs.openapi.definitions import OPENAPI_31  # noqa: E402
from schemathesis_hooks import KNOWN_GAPS  # noqa: E402

KEY = "openapi-test-key-1234"
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
EXAMPLES = os.environ.get("OPENAPI_FUZZ_EXAMPLES", "25")
SEED = os.environ.get("OPENAPI_FUZZ_SEED", "1")     # "random": a new seed each run (printed on failure)
PATHS = {"/": "post", "/v1/chat/completions": "post", "/v1/models": "get", "/v1/models/{model_id}": "get",
         "/health": "get", "/sessions/{session_id}": "get", "/sessions/{session_id}/heard": "post"}
OPERATIONS = len(PATHS) + 1    # and DELETE /sessions/{session_id}


@pytest.fixture(scope="module")
def served():
    server = serve_router()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def served_with_key():
    server = serve_router(api_key=KEY)
    yield server
    server.stop()


def document(server) -> dict:
    return openapi_document(server.handle.server.config.app)


def fuzz(url: str, workdir: Path, *extra: str, examples: str = EXAMPLES, hooks: bool = True,
         seed: str = SEED) -> tuple[subprocess.CompletedProcess, dict]:
    """One schemathesis run against `url`: its process (output in .stdout) and its JSON report."""
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all",
           "--max-examples", examples, "--generation-database", "none", "--request-timeout", "10",
           "--no-color", "--output-sanitize", "false", "--report", "json", "--report-json-path", str(report),
           *(() if seed == "random" else ("--seed", seed)), *extra]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env.pop("SCHEMATHESIS_HOOKS", None)
    if hooks:
        env["SCHEMATHESIS_HOOKS"] = str(HOOKS)
    # cwd: the run's files (reports, caches) stay out of the checkout
    run = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert report.exists(), run.stdout[-4000:] + run.stderr[-4000:]
    return run, json.loads(report.read_text())


def assert_conforms(run: subprocess.CompletedProcess, report: dict) -> None:
    output = run.stdout[-20000:] + run.stderr[-4000:]
    assert report["operations"]["tested"] == OPERATIONS, output
    assert report["failures"] == [] and report["errors"] == [], output
    assert run.returncode == 0, output
    assert report["test_cases"]["generated"] >= 5 * OPERATIONS, output


# ---- the fuzzer -----------------------------------------------------------------------------

def test_fuzzer_finds_no_failures(served, tmp_path):
    assert_conforms(*fuzz(served.url, tmp_path))


def test_fuzzer_finds_no_failures_with_api_key(served_with_key, tmp_path):
    """With a key, the fuzzer also sends requests without it (or with a wrong one) and expects 401."""
    assert_conforms(*fuzz(served_with_key.url, tmp_path, "--header", f"Authorization: Bearer {KEY}"))


def test_fuzzer_catches_a_wrong_document(tmp_path):
    """The same run fails on a document that leaves out an error status, misstates a reply field and
    claims a key the server does not need, so a green run above means something."""
    server = serve_router()
    try:
        doc = document(server)
        del doc["paths"]["/v1/chat/completions"]["post"]["responses"]["400"]
        doc["components"]["schemas"]["Health"]["properties"]["status"] = {"const": "fine"}
        doc["paths"]["/v1/models"]["get"]["security"] = [{"bearerAuth": []}]
        run, report = fuzz(server.url, tmp_path, "--phases", "coverage", examples="5")
    finally:
        server.stop()
    assert run.returncode != 0
    codes = {f["code"]: f["operations"] for f in report["failures"]}
    # an undocumented status, a body that violates its schema, an auth the API ignores
    assert codes.keys() >= {"ST103", "ST108", "ST401"}, run.stdout[-6000:]


GAP_CASES = [
    ("last-message-rule", "/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}),
    ("last-message-rule", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
    ("tool-choice-names-a-tool", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "a"}}],
      "tool_choice": {"type": "function", "function": {"name": "b"}}}),
    ("provider-cannot-honour", "/v1/chat/completions",
     {"model": "direct", "messages": [{"role": "user", "content": "hi"}], "modalities": ["audio"]}),
]


@pytest.mark.parametrize("name, path, body", GAP_CASES)
def test_known_gap_still_there(served, name, path, body):
    """Each KNOWN_GAPS entry is a schema-valid request a route still refuses. Once the route accepts it,
    this fails: then delete the entry from schemathesis_hooks.KNOWN_GAPS and its cases here."""
    assert name in KNOWN_GAPS
    response = requests.post(served.url + path, json=body, timeout=30)
    assert response.status_code in (400, 422), (
        f"fixed: the route accepts {body}; delete KNOWN_GAPS[{name!r}] and its cases in GAP_CASES")


def test_every_known_gap_has_a_case():
    assert {name for name, _, _ in GAP_CASES} == KNOWN_GAPS.keys()


# ---- the document itself --------------------------------------------------------------------

def test_document_is_valid_openapi_3_1(served, served_with_key):
    for doc in (document(served), document(served_with_key)):
        assert doc["openapi"].startswith("3.1.")
        assert not _errors(jsonschema_rs.validator_for(OPENAPI_31), doc)


def test_document_declares_bodies_errors_and_streams(served, served_with_key):
    doc = document(served)
    assert doc["paths"].keys() == PATHS.keys()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas     # FastAPI's 422 shape, which this API never sends
    error_model = {"/": "SeedError", "/v1/chat/completions": "OpenAIError", "/v1/models": "OpenAIError",
                "/v1/models/{model_id}": "OpenAIError", "/health": "SeedError",
                "/sessions/{session_id}": "SeedError", "/sessions/{session_id}/heard": "SeedError"}
    for path, method in PATHS.items():
        op = doc["paths"][path][method]
        responses = op["responses"]
        assert "401" not in responses and op["security"] == []  # no key on this server
        assert "500" in responses
        for status, response in responses.items():
            assert response["headers"]["X-Request-ID"]["required"] is True
            if status != "200":
                assert error_model[path] in json.dumps(response["content"]["application/json"]["schema"]), status
    for path, model, reply in (("/", "SeedRequest", "SeedReply"),
                               ("/v1/chat/completions", "ChatCompletionRequest", "ChatCompletion")):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/" + model)
        assert {"400", "404", "413", "415", "429", "502", "503", "504"} <= op["responses"].keys()
        content = op["responses"]["200"]["content"]
        assert content["application/json"]["schema"]["$ref"].endswith("/" + reply)
        assert "data" in content["text/event-stream"]["schema"]["properties"]
        assert {"Retry-After"} <= op["responses"]["429"]["headers"].keys()
        assert {"Retry-After"} <= op["responses"]["503"]["headers"].keys()
    assert "422" in doc["paths"]["/"]["post"]["responses"]     # /v1 says 400 for an invalid field, as OpenAI
    assert "422" not in doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "404" in doc["paths"]["/v1/models/{model_id}"]["get"]["responses"]

    keyed = document(served_with_key)
    scheme = keyed["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method in PATHS.items():
        op = keyed["paths"][path][method]
        if path == "/health":
            assert op["security"] == [] and "401" not in op["responses"]
        else:
            assert op["security"] == [{"bearerAuth": []}]
            assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True


def _validator(doc: dict, schema: dict):
    """A validator for `schema`, whose $refs point into the document's components."""
    return jsonschema_rs.validator_for({**schema, "components": doc["components"]})


def _errors(validator, value) -> list[str]:
    return [e.message for e in validator.iter_errors(value)]


def test_streamed_events_match_the_document(served):
    """The event schemas, checked against real streams (the fuzzer checks what it happens to draw)."""
    doc = document(served)
    for path, body, last in (
            ("/", {"prompt": "今天25.5℃。It is warm! Enjoy.", "stream": True, "emotions": True}, "SeedDoneEvent"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "One. Two."}], "stream": True,
                                      "stream_options": {"include_usage": True}}, "[DONE]")):
        data = doc["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"][
            "properties"]["data"]   # one event's `data`: a JSON text (and on /v1 the closing "[DONE]")
        json_data = next(s for s in [data, *data.get("anyOf", [])] if "contentSchema" in s)
        event = _validator(doc, json_data["contentSchema"])
        response = requests.post(served.url + path, json=body, stream=True, timeout=30)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = [item for _, item in sse_events(response)]
        assert len(events) >= 3, events
        for item in events:
            if item == "[DONE]":
                assert {"const": "[DONE]"} in data.get("anyOf", [])
            else:
                assert not _errors(event, item), (item, _errors(event, item))
        if last == "[DONE]":
            assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]
        else:
            assert events[-1].get("done") is True
        if path == "/":
            assert not _errors(_validator(doc, {"$ref": f"#/components/schemas/{last}"}), events[-1])


def test_json_replies_match_the_document(served):
    doc = document(served)
    calls = [("post", "/", {"prompt": "你好。Hello there."}, "SeedReply"),
             ("post", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi."}]}, "ChatCompletion"),
             ("get", "/v1/models", None, "ModelList"), ("get", "/v1/models/direct", None, "Model"),
             ("get", "/health", None, "Health"),
             ("get", "/v1/models/nope", None, "OpenAIError"), ("post", "/", {"prompt": " "}, "SeedError"),
             ("post", "/v1/chat/completions", {"messages": []}, "OpenAIError")]
    for method, path, body, model in calls:
        response = requests.request(method, served.url + path, json=body, timeout=30)
        validator = _validator(doc, {"$ref": f"#/components/schemas/{model}"})
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert not errors, (path, response.text, errors)
