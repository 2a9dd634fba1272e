"""`/docs` (Swagger UI) and `/redoc`, served offline: no CDN, no foreign favicon.

FastAPI's own pages load their JS and CSS from cdn.jsdelivr.net and their favicon from fastapi.tiangolo.com,
so offline (or where those hosts are blocked) they are blank. Here the same pages (FastAPI's
`get_swagger_ui_html` / `get_redoc_html`) point at files the API serves itself, under `/docs/assets/`,
from the `fastapi-offline` package (MIT; Swagger UI 5.x, Apache-2.0; ReDoc 2.x, MIT). They sit behind
the API key exactly as `/docs` and `/openapi.json` do: `Context.authorized` opens only /health.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs/assets"     # swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js, favicon.png
ASSETS_PACKAGE = ("fastapi_offline", "static")
# Nothing from another host, even where a page asks for it: ReDoc's sidebar always loads its maker's logo
# from cdn.redoc.ly (hidden when that fails). Both pages use inline scripts and styles, ReDoc a blob: worker.
CSP = {"Content-Security-Policy": "default-src 'self' 'unsafe-inline' data: blob:"}


def add_docs(app: FastAPI) -> None:
    """Add /docs, its OAuth2 redirect, /redoc and their assets to `app` (made with docs_url=None)."""
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_csp(get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=oauth2_redirect_url and root + oauth2_redirect_url,
            init_oauth=app.swagger_ui_init_oauth, swagger_ui_parameters=app.swagger_ui_parameters,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png"))

    async def swagger_ui_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _with_csp(get_redoc_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png", with_google_fonts=False))

    app.add_route(DOCS_URL, swagger_ui, include_in_schema=False)
    if oauth2_redirect_url:
        app.add_route(oauth2_redirect_url, swagger_ui_redirect, include_in_schema=False)
    app.add_route(REDOC_URL, redoc, include_in_schema=False)


def _with_csp(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(CSP)
    return page
