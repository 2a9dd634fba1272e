"""/docs works offline: Swagger UI's JS, CSS and favicon come from the API itself, never from a CDN.

FastAPI's own page loads them from cdn.jsdelivr.net and fastapi.tiangolo.com: offline (or where those hosts
are blocked) it was a blank page. /redoc likewise. Behind an API key they are as gated as /docs itself.
"""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.api_helpers import serve_router

KEY = "docs-test-key-1234"
CHROMIUM = "/usr/bin/chromium"
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/"}


class _Links(HTMLParser):
    """Every src and href in a page."""

    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def assets(server, page: str, headers: dict | None = None) -> dict[str, requests.Response]:
    """Each src/href of `page` (all on the server's own host), fetched: url -> response."""
    response = requests.get(f"{server.url}{page}", headers=headers, timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    parser = _Links()
    parser.feed(response.text)
    assert parser.links, response.text
    fetched = {}
    for link in parser.links:
        url = urljoin(response.url, link)
        assert urlsplit(url).netloc == urlsplit(server.url).netloc, f"{page} loads {link} from another host"
        fetched[url] = requests.get(url, headers=headers, timeout=10)
        assert fetched[url].status_code == 200, (link, fetched[url].text[:200])
        suffix = "." + urlsplit(url).path.rsplit(".", 1)[-1]
        assert CONTENT_TYPES[suffix] in fetched[url].headers["content-type"], (link, fetched[url].headers)
    # and the browser is told to load nothing from another host (ReDoc asks for its maker's logo)
    assert response.headers["content-security-policy"].startswith("default-src 'self' ")
    return fetched


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


def test_docs_assets_are_served_by_the_api(served):
    fetched = assets(served, "/docs")
    paths = {urlsplit(url).path for url in fetched}
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= paths
    assert any(path.endswith(".png") for path in paths)    # the favicon: ours, not fastapi.tiangolo.com's
    assert len(next(r for u, r in fetched.items() if u.endswith(".js")).content) > 500_000   # the real bundle
    html = requests.get(f"{served.url}/docs", timeout=10).text
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    assert requests.get(f"{served.url}/openapi.json", timeout=10).status_code == 200
    assert requests.get(f"{served.url}/docs/oauth2-redirect", timeout=10).status_code == 200
    assert requests.get(f"{served.url}/docs/assets/nothing.js", timeout=10).status_code == 404


def test_redoc_assets_are_served_by_the_api(served):
    fetched = assets(served, "/redoc")
    assert "/docs/assets/redoc.standalone.js" in {urlsplit(url).path for url in fetched}
    assert "fonts.googleapis.com" not in requests.get(f"{served.url}/redoc", timeout=10).text


def test_docs_and_their_assets_follow_the_api_key(served_with_key):
    auth = {"Authorization": f"Bearer {KEY}"}
    fetched = assets(served_with_key, "/docs", auth)
    assets(served_with_key, "/redoc", auth)
    assert requests.get(f"{served_with_key.url}/openapi.json", headers=auth, timeout=10).status_code == 200
    # Without the key: the assets are as closed as /docs and /openapi.json (only /health is open).
    for url in [f"{served_with_key.url}/docs", f"{served_with_key.url}/openapi.json", *fetched]:
        assert requests.get(url, timeout=10).status_code == 401, url
    assert requests.get(f"{served_with_key.url}/health", timeout=10).status_code == 200


def test_docs_render_in_a_browser_with_every_foreign_host_blocked(served):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    host = urlsplit(served.url).hostname
    foreign: list[str] = []

    def only_ours(route):
        if urlsplit(route.request.url).hostname == host:
            route.continue_()
        else:
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page()
            page.on("request", lambda r: urlsplit(r.url).hostname == host or foreign.append(r.url))
            page.route("**/*", only_ours)
            page.goto(f"{served.url}/docs")
            page.locator(".opblock", has_text="/v1/chat/completions").first.wait_for(timeout=15_000)
            assert page.locator(".opblock").count() >= 8     # every operation of the document
        finally:
            browser.close()
    assert foreign == []
