"""Ollama's models as providers, found by asking: no configs.yaml entry.

When an Ollama server answers on $OLLAMA_HOST (default 127.0.0.1:11434, read as Ollama reads it), each
model it lists is a provider of the openai kind named `ollama/<model>` ("Ollama · <model>" in the dropdown),
through Ollama's OpenAI-compatible API at <host>/v1. The app's entry points turn it on for their router:

    discovery = ollama.discover(router)   # None when $LLM_OLLAMA or $OLLAMA_HOST is off

A background thread asks GET /api/tags at once and then every INTERVAL seconds (`refresh()` asks now), so
startup never waits for it and a model pulled, or a server started, later appears. Each try is short: a
refused connection fails at once, an address where nothing answers after CONNECT_TIMEOUT.

A model stays listed once seen: when the server stops answering (or no longer lists it) it is "not ready"
with the command that fixes it, rather than gone: a dropdown entry that vanishes would take the user's
choice (or an API client's model) with it, and an Ollama restart would make the list flicker.
A name the config already uses (as a provider or an alias) keeps its own provider.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from configs import ProviderConfig

from .providers.openai_compat import OpenAIProvider
from .types import ProviderStatus

if TYPE_CHECKING:
    from .router import Router

log = logging.getLogger(__name__)

HOST_VAR = "OLLAMA_HOST"        # Ollama's own: host:port, http(s)://host[:port][/path], 0.0.0.0 ...
SWITCH_VAR = "LLM_OLLAMA"       # ours: off turns discovery off without touching Ollama's variable
OFF = frozenset({"off", "0", "false", "no", "none", "disabled"})
DEFAULT_PORT = 11434
PREFIX = "ollama/"
INTERVAL = 30.0                 # seconds between probes
CONNECT_TIMEOUT = 0.4           # seconds: a probe must not hold anything up
READ_TIMEOUT = 3.0              # seconds for the answer once connected
MAX_BYTES = 4_000_000           # /api/tags of a few hundred models is well under this
# Ollama's own defaults a router should know: a cold model loads before its first token (seconds to a
# minute on a CPU), and its default context (num_ctx) is small; the OpenAI API cannot raise it.
LOAD_TIMEOUT = 120.0
CONTEXT_WINDOW = 4096


def ollama_url(value: str | None) -> str | None:
    """The server's base URL for an $OLLAMA_HOST value, read as Ollama reads it; None when it says off.

    Spaces and quotes around it are dropped; no scheme means http and port 11434, while http:// and
    https:// without a port mean 80 and 443; a port that is not a number falls back to that default;
    an empty host is 127.0.0.1. The "any address" a server binds (0.0.0.0, ::) is reached on loopback.
    ValueError for a scheme other than http(s)."""
    raw = (value or "").strip().strip("\"'").strip()
    if raw.lower() in OFF:
        return None
    scheme, sep, rest = raw.partition("://")
    port = DEFAULT_PORT
    if not sep:
        scheme, rest = "http", raw
    elif scheme.lower() in ("http", "https"):
        scheme = scheme.lower()
        port = 80 if scheme == "http" else 443
    else:
        raise ValueError(f"{HOST_VAR}={value!r}: the scheme must be http or https")
    hostport, _, path = rest.partition("/")
    host, given = _split_host_port(hostport)
    if given is not None and given.isdigit() and int(given) <= 65535:
        port = int(given)
    host = host or "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if ip.is_unspecified:
            ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
        host = f"[{ip}]" if ip.version == 6 else str(ip)
    path = path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def _split_host_port(hostport: str) -> tuple[str, str | None]:
    """(host, port) as Go's net.SplitHostPort splits it; (the host alone, None) where it has no port."""
    if hostport.startswith("["):
        host, closed, after = hostport[1:].partition("]")
        return (host, after[1:]) if closed and after.startswith(":") else (host, None)
    host, colon, port = hostport.rpartition(":")
    if colon and ":" not in host:
        return host, port
    return hostport, None     # no port, or a bare IPv6 address


def provider_config(model: str, url: str) -> ProviderConfig:
    """The provider for one of the server's models."""
    return ProviderConfig(f"{PREFIX}{model}", "openai", model, label=f"Ollama · {model}",
                          base_url=f"{url}/v1", timeout=LOAD_TIMEOUT, first_token_timeout=LOAD_TIMEOUT,
                          context_window=CONTEXT_WINDOW)


def chat_models(tags: Any) -> list[str]:
    """The model names in an /api/tags answer, without embedding models (they cannot chat);
    ValueError when it is not Ollama's shape."""
    models = tags.get("models") if isinstance(tags, dict) else None
    if not isinstance(models, list):
        raise ValueError("/api/tags has no list of models: not an Ollama server?")
    names: list[str] = []
    for entry in models:
        name = (entry.get("name") or entry.get("model")) if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or name in names:
            continue
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        families = [details.get("family"), *(details.get("families") or ())]
        if "embed" in name.lower() or any(isinstance(f, str) and f.endswith("bert") for f in families):
            continue
        names.append(name)
    return names


class OllamaProvider(OpenAIProvider):
    """One of Ollama's models through its OpenAI-compatible API; ready while the last probe listed it."""

    def __init__(self, config: ProviderConfig, env: Mapping[str, str] | None, discovery: OllamaDiscovery):
        super().__init__(config, env)
        self.discovery = discovery

    def status(self) -> ProviderStatus:
        return self.discovery.status(self.config.model)


class OllamaDiscovery:
    """Finds the models of the Ollama server at `url` for `router`: `start()` probes in a background
    thread every `interval` seconds; `refresh()` probes now (blocking, a few seconds at most)."""

    def __init__(self, router: Router, url: str, *, interval: float = INTERVAL):
        self.router, self.url, self.interval = router, url, interval
        self.up = False                     # whether the last probe was answered
        self.models: tuple[str, ...] = ()   # what the last answered probe listed
        self.error = ""                     # why the last probe failed
        self.probed = threading.Event()     # set as each probe ends (the first: the startup list is known)
        self._offered: set[str] = set()     # models already given to the router
        self._lock = threading.Lock()       # one probe at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> OllamaDiscovery:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ollama-discovery", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """End the background probes (an unfinished one ends within its timeouts)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(CONNECT_TIMEOUT + READ_TIMEOUT + 1)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:   # noqa: BLE001 - a bug here must not end discovery, nor reach anyone
                log.exception("probing Ollama at %s failed", self.url)
            if self._stop.wait(self.interval):
                return

    def refresh(self) -> list[str]:
        """Ask the server now; its new models become the router's providers. Returns the names added."""
        with self._lock:
            try:
                return self._probe()
            finally:
                self.probed.set()

    def _probe(self) -> list[str]:
        try:
            models = chat_models(self._get("/api/tags"))
        except (OSError, ValueError, http.client.HTTPException) as e:
            if self.up:
                log.warning("Ollama at %s stopped answering (%s): its models are not ready", self.url, e)
            else:   # the usual case where no one runs Ollama: not worth a line on the console
                log.debug("no Ollama at %s: %s", self.url, e)
            self.up, self.error = False, str(e) or type(e).__name__
            return []
        if not self.up:
            log.info("Ollama %s at %s: %s", self._version(), self.url, ", ".join(models) or "no models")
        self.up, self.models, self.error = True, tuple(models), ""
        new = [m for m in models if m not in self._offered]
        self._offered.update(new)
        if not new:
            return []
        return self.router.add_providers({
            f"{PREFIX}{m}": OllamaProvider(provider_config(m, self.url), self.router.env, self) for m in new})

    def status(self, model: str) -> ProviderStatus:
        """Whether `model` can answer, from the last probe (cheap: no request)."""
        if not self.up:
            return ProviderStatus(False, f"Ollama does not answer at {self.url} ({self.error})",
                                  "ollama serve or start the Ollama app")
        if model not in self.models:
            return ProviderStatus(False, f"Ollama at {self.url} no longer has {model}",
                                  f"ollama pull {model}")
        return ProviderStatus(True)

    def _version(self) -> str:
        try:
            return str(self._get("/api/version").get("version") or "?")
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            return "?"

    def _get(self, path: str) -> Any:
        """GET a JSON document from the server: CONNECT_TIMEOUT to connect, READ_TIMEOUT to answer."""
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        sock.settimeout(READ_TIMEOUT)
        if parts.scheme == "https":
            try:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=READ_TIMEOUT)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=READ_TIMEOUT)
        conn.sock = sock
        try:
            conn.request("GET", parts.path + path, headers={"Accept": "application/json"})
            response = conn.getresponse()
            body = response.read(MAX_BYTES)
            if response.status != 200:
                raise ValueError(f"GET {path} answered {response.status}")
            return json.loads(body)
        finally:
            conn.close()


def discover(router: Router, env: Mapping[str, str] | None = None, *, background: bool = True,
             interval: float = INTERVAL) -> OllamaDiscovery | None:
    """Offer the Ollama server's models to `router` (the app's entry points call it once, after building
    the router). `env`: where $OLLAMA_HOST and $LLM_OLLAMA are read (default: the router's). In the
    `background` (a thread: returns at once) and every `interval` seconds; else one probe now, and no
    more (a one-shot command such as `python -m llm status`). None when turned off."""
    env = env if env is not None else router.env if router.env is not None else os.environ
    if env.get(SWITCH_VAR, "").strip().lower() in OFF:
        return None
    try:
        url = ollama_url(env.get(HOST_VAR))
    except ValueError as e:
        log.warning("Ollama discovery is off: %s", e)
        return None
    if url is None:
        return None
    discovery = OllamaDiscovery(router, url, interval=interval)
    if background:
        return discovery.start()
    discovery.refresh()
    return discovery
