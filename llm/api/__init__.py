"""The HTTP API: the seed `POST /`, an OpenAI-compatible `/v1`, and `/health`.

Every generation runs through `Router.astream`, so the event loop never blocks and requests to
cloud providers overlap. Bodies are read and parsed here, strictly, so every bad input gets a 4xx in
the route's error shape (`errors.py`) instead of a 500.
"""

from .app import create_app
from .server import ServerThread, bind, check_bind_security, serve, socket_family, start_in_thread

__all__ = ["create_app", "ServerThread", "bind", "check_bind_security", "serve", "socket_family",
           "start_in_thread"]
