"""A loopback Hugging Face hub serving repos from local folders, over the HTTP huggingface_hub 2.4 speaks.

    with FakeHub({"fake-org/tiny-chat": folder}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        ...  # HfApi().model_info, snapshot_download; then inspect hub.requests, hub.bytes_served

What `HfApi.model_info` and `snapshot_download` send (read from the package source, checked by logging):
    GET  /api/models/{repo}                          model_info: JSON with "sha" and "siblings"
    GET  /api/models/{repo}/revision/main            repo_info, snapshot_download's first call: the commit
    GET  /api/models/{repo}/tree/{sha}?recursive=True&expand=False
                                                     list_repo_tree: every file's path, size, oid (+ lfs)
    HEAD /{repo}/resolve/{sha}/{path}                per file: X-Repo-Commit, ETag, Content-Length; for LFS
                                                     files 302 to the CDN with X-Linked-Etag, X-Linked-Size
    GET  /{repo}/resolve/{sha}/{path}                a regular file's bytes
    GET  {cdn}/blobs/{sha256}                        an LFS file's bytes, from a second port (another host
                                                     to the client, so it drops the Authorization header)
GETs honour `Range: bytes=N-[M]` (206), as a resumed download sends. No X-Xet-* header or xetHash is ever
sent, so the client downloads over plain HTTP, never through hf_xet. An unknown repo answers 404 with
X-Error-Code: RepoNotFound, as the hub does (RepositoryNotFoundError).

Faults: `faults=[...]` scripts what each request whose path contains `fault_paths` meets, in order (the
last one repeats): "ok", "status:503" (that status, JSON error body), "close" (the connection closes with
no answer), "cut:N" (N bytes of the body, then the connection closes).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from tests import fake_servers

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".gguf", ".onnx", ".model")
_API = re.compile(r"^/api/models/(?P<repo>.+?)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?:/.*)?)?$")
_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class RepoFile:
    path: str
    local: Path
    size: int
    oid: str                # git blob sha1: a regular file's ETag
    sha256: str | None      # set for LFS files: their ETag and CDN name


class _Handler(fake_servers._Handler):
    """Keep-alive HTTP/1.1 with connection tracking, as the fake API servers; GET and HEAD only."""

    def do_POST(self) -> None:
        self.send_error(405)

    def do_GET(self) -> None:
        self.server.fake._serve(self, self.server.role)

    def do_HEAD(self) -> None:
        self.server.fake._serve(self, self.server.role)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output stays readable."""


class FakeHub:
    """Serves `repos` ({repo id: folder}); `requests` logs every request, `bytes_served` counts file bytes."""

    def __init__(self, repos: dict[str, str | Path] | None = None, *, faults: list[str] | None = None,
                 fault_paths: str = "", bytes_per_s: int | None = None):
        self.repos: dict[str, dict[str, RepoFile]] = {}
        self.commits: dict[str, str] = {}
        for repo_id, folder in (repos or {}).items():
            self.add(repo_id, folder)
        self.faults, self.fault_paths = list(faults or ["ok"]), fault_paths
        self.bytes_per_s = bytes_per_s      # a slow link, so a progress bar has time to show
        self.requests: list[dict] = []      # {"server": "hub"|"cdn", "method", "path", "headers"}
        self.bytes_served = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.connections = 0    # accepted, ever (the shared handler counts them)
        self._servers: dict[str, ThreadingHTTPServer] = {}

    def add(self, repo_id: str, folder: str | Path) -> None:
        """Serve every file under `folder` (but .git) as repo `repo_id`, at a commit derived from them."""
        folder = Path(folder)
        files = {}
        for local in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.parts):
            data = local.read_bytes()
            name = local.relative_to(folder).as_posix()
            lfs = name.endswith(LFS_SUFFIXES) or len(data) > 10 * 2**20
            files[name] = RepoFile(name, local, len(data),
                                   hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                                   hashlib.sha256(data).hexdigest() if lfs else None)
        self.repos[repo_id] = files
        listing = "".join(f"{f.path}:{f.oid}\n" for f in files.values())
        self.commits[repo_id] = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()

    # ---- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The value for HF_ENDPOINT."""
        return self._url("hub")

    @property
    def cdn(self) -> str:
        return self._url("cdn")

    def _url(self, role: str) -> str:
        if role not in self._servers:
            raise RuntimeError("FakeHub is not started: use it as a context manager")
        return f"http://127.0.0.1:{self._servers[role].server_address[1]}"

    def __enter__(self) -> FakeHub:
        for role in ("hub", "cdn"):
            httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            httpd.daemon_threads, httpd.fake, httpd.role = True, self, role
            threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                             name=f"FakeHub-{role}", daemon=True).start()
            self._servers[role] = httpd
        return self

    def __exit__(self, *exc) -> None:
        for httpd in self._servers.values():
            httpd.shutdown()
        for conn in list(self._connections):    # wake handlers parked on idle keep-alive sockets
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for httpd in self._servers.values():
            httpd.server_close()
        self._servers.clear()

    # ---- one request -------------------------------------------------------------------------

    def _serve(self, h: _Handler, role: str) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append({"server": role, "method": h.command, "path": h.path,
                                  "headers": {k.lower(): v for k, v in h.headers.items()}})
            fault = "ok"
            if self.fault_paths in path:
                fault = self.faults.pop(0) if len(self.faults) > 1 else self.faults[0]
        kind, _, arg = fault.partition(":")
        if kind == "status":
            return self._json(h, int(arg), {"error": f"fake hub: {arg} on purpose"})
        if kind == "close":
            h.close_connection = True
            return None
        cut = int(arg) if kind == "cut" else None
        if role == "cdn":
            return self._cdn(h, path, cut)
        if m := _API.match(path):
            return self._api(h, m["repo"], m["kind"], m["rev"])
        if m := _RESOLVE.match(path):
            return self._resolve(h, m["repo"], m["rev"], m["path"], cut)
        return self._json(h, 404, {"error": "Not Found"})

    def _api(self, h: _Handler, repo_id: str, kind: str | None, rev: str | None) -> None:
        commit = self._commit(h, repo_id, rev or "main")
        if commit is None:
            return None
        files = self.repos[repo_id].values()
        if kind == "tree":
            folders = sorted({str(p) for f in files for p in Path(f.path).parents if str(p) != "."})
            tree = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    for d in folders]
            tree += [{"type": "file", "oid": f.oid, "size": f.size, "path": f.path}
                     | ({"lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}} if f.sha256 else {})
                     for f in files]
            return self._json(h, 200, tree)
        return self._json(h, 200, {
            "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
            "author": repo_id.partition("/")[0], "sha": commit, "private": False, "gated": False,
            "disabled": False, "downloads": 0, "likes": 0, "tags": ["transformers"],
            "library_name": "transformers", "lastModified": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": f.path} for f in files]})

    def _resolve(self, h: _Handler, repo_id: str, rev: str, name: str, cut: int | None) -> None:
        commit = self._commit(h, repo_id, rev)
        if commit is None:
            return None
        f = self.repos[repo_id].get(name)
        if f is None:
            return self._json(h, 404, {"error": "Entry not found"},
                              {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        if f.sha256 is None:
            return self._file(h, f, {"ETag": f'"{f.oid}"', "X-Repo-Commit": commit}, cut)
        h.send_response(302)    # LFS: the hub points at its CDN and names the blob in X-Linked-*
        for key, value in {"Location": f"{self.cdn}/blobs/{f.sha256}?name={quote(name)}", "Content-Length": "0",
                           "ETag": f'"{f.oid}"', "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                           "X-Repo-Commit": commit}.items():
            h.send_header(key, value)
        h.end_headers()
        return None

    def _cdn(self, h: _Handler, path: str, cut: int | None) -> None:
        sha = path.removeprefix("/blobs/")
        found = [f for files in self.repos.values() for f in files.values() if f.sha256 == sha]
        if not found:
            return self._json(h, 404, {"error": "NoSuchKey"})
        return self._file(h, found[0], {"ETag": f'"{sha}"'}, cut)

    def _commit(self, h: _Handler, repo_id: str, rev: str) -> str | None:
        """The commit `rev` names in `repo_id`; None once a 404 in the hub's shape has been sent."""
        if repo_id not in self.repos:
            self._json(h, 404, {"error": "Repository not found"},
                       {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"})
            return None
        commit = self.commits[repo_id]
        if unquote(rev) not in ("main", commit):
            self._json(h, 404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
            return None
        return commit

    def _file(self, h: _Handler, f: RepoFile, headers: dict[str, str], cut: int | None) -> None:
        data = f.local.read_bytes()
        start, end, status = 0, len(data) - 1, 200
        if h.command == "GET" and (m := _RANGE.match(h.headers.get("Range", ""))):
            start, end, status = int(m[1]), int(m[2] or end), 206
            if start >= len(data):
                return self._json(h, 416, {"error": "Range Not Satisfiable"},
                                  {"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            headers = headers | {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        body = data[start:end + 1]
        h.send_response(status)
        for key, value in (headers | {"Content-Length": str(len(body)), "Accept-Ranges": "bytes",
                                      "Content-Type": "application/octet-stream"}).items():
            h.send_header(key, value)
        h.end_headers()
        if h.command == "HEAD":
            return None
        if cut is not None:
            body, h.close_connection = body[:cut], True
        step = max(1, self.bytes_per_s // 20) if self.bytes_per_s else len(body) or 1
        for i in range(0, len(body), step):
            h.wfile.write(body[i:i + step])
            if self.bytes_per_s:
                time.sleep(0.05)
        with self._lock:
            self.bytes_served += len(body)
        return None

    def _json(self, h: _Handler, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        h.send_response(status)
        for key, value in ({"Content-Type": "application/json", "Content-Length": str(len(data))}
                           | (headers or {})).items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
