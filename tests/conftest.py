"""Fixtures shared by the test modules. A module that serves the API names its own `served` fixture;
`sdk` is the openai SDK pointed at it. `browser` is Debian's Chromium, driven by playwright."""

from __future__ import annotations

import shutil

import openai
import pytest

# CI setup: `apt-get install -y chromium fonts-wqy-microhei` and `pip install playwright` (never
# `playwright install`: the tests use the system's Chromium).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless=new", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def sdk(served):
    """The openai SDK against this module's served API: no retries of its own, a 20 s timeout."""
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=20)


@pytest.fixture(scope="module")
def browser():
    """Chromium for a module's page tests; they are skipped where it or playwright is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install playwright")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium fonts-wqy-microhei")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
