"""The HTTP API: the seed `POST /`, an OpenAI-compatible `/v1`, and `/health`.

Every generation runs through `Router.astream`, so the event loop never blocks and requests to
cloud providers overlap. Bodies are read and parsed here, strictly, so every bad input gets a 4xx in
the route's error shape instead of a 500.

    app.py      the app factory, the API key gate, /health
    context.py  what the routes share: the router, limits, secrets
    errors.py   any failure -> each route's error shape
    seed.py     POST /
    openai.py   /v1/chat/completions, /v1/models
    schemas.py  request bodies (strict parsing)
    openapi.py  the OpenAPI document: request bodies, every reply and event stream, errors, auth
    turn.py     one generation behind a route: first-chunk wait, hang-ups, SSE
    server.py   binding the port and serving
"""

from .app import create_app
from .server import ServerThread, bind, check_bind_security, serve, socket_family, start_in_thread

__all__ = ["create_app", "ServerThread", "bind", "check_bind_security", "serve", "socket_family",
           "start_in_thread"]
