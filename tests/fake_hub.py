"""A loopback HTTP server that answers the Hugging Face hub endpoints ``huggingface_hub``
uses to download a model revision (``snapshot_download``, ``hf_hub_download``,
``AutoTokenizer.from_pretrained``), so that tests download for real, offline.

Endpoints (``HF_ENDPOINT`` = :attr:`FakeHub.endpoint`):

- ``GET /api/models/{repo}/revision/{rev}``: repo info (``sha`` = the commit, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}``: the file listing (size, git oid, LFS sha256);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: a file, with ``X-Repo-Commit``, ``ETag``
  and ``X-Linked-Etag`` (its sha256: the hub cache names blobs by it) and
  ``Content-Length``.

Every file request is logged (time, method, repo, revision, file, bytes sent).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Served:
    """One file request the server answered."""

    wall: float  # time.time() when the response was complete
    method: str
    repo: str
    revision: str
    file: str
    bytes: int  # body bytes sent (0 for HEAD)


@dataclass
class FakeHub:
    """Model repos held in memory: ``refs[repo][name] = commit``, ``files[commit] =
    {filename: bytes}``."""

    refs: dict[str, dict[str, str]] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)
    log: list[Served] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    def publish(self, repo: str, revision: str, folder: Path) -> str:
        """Serve every file of ``folder`` as ``repo@revision``; returns its commit (40 hex)."""
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        self.files[commit] = {f.name: f.read_bytes() for f in sorted(folder.iterdir())
                              if f.is_file()}
        self.refs.setdefault(repo, {})[revision] = commit
        return commit

    def alias(self, repo: str, name: str, revision: str) -> None:
        """``name`` (a branch, e.g. main) points at the commit of ``revision``."""
        self.refs[repo][name] = self.refs[repo][revision]

    def sha256(self, commit: str, name: str) -> str:
        return hashlib.sha256(self.files[commit][name]).hexdigest()

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "FakeHub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def resolve(self, repo: str, rev: str) -> str | None:
        """The commit of ``rev`` (a ref name or a commit hash) in ``repo``; None: unknown."""
        refs = self.refs.get(repo, {})
        if rev in refs:
            return refs[rev]
        return rev if rev in refs.values() else None


API = re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/(?P<kind>revision|tree)/(?P<rev>[^/]+)"
                 r"(?P<rest>/.*)?")
RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None,
              head: bool = False) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: str, commit: str | None = None, head: bool = False) -> None:
        headers = {"X-Error-Code": code, "Content-Type": "application/json"}
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(404, b"" if head else json.dumps({"error": code}).encode(), headers, head)

    def _json(self, obj) -> None:
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        hub = self.hub
        m = API.fullmatch(path) or RESOLVE.fullmatch(path)
        if m is None or m["repo"] not in hub.refs:
            return self._error("RepoNotFound", head=head)
        commit = hub.resolve(m["repo"], m["rev"])
        if commit is None:
            return self._error("RevisionNotFound", head=head)
        files = hub.files[commit]
        if m.re is API and m["kind"] == "revision":
            return self._json({"id": m["repo"], "modelId": m["repo"], "sha": commit,
                               "private": False, "disabled": False, "gated": False,
                               "siblings": [{"rfilename": f} for f in files]})
        if m.re is API:  # tree listing: the whole (flat) repo
            return self._json([
                {"type": "file", "path": f, "size": len(b),
                 "oid": hashlib.sha1(b"blob %d\0" % len(b) + b).hexdigest(),
                 "lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b),
                         "pointerSize": 134}}
                for f, b in files.items()] if not m["rest"] else [])
        if m["file"] not in files:
            return self._error("EntryNotFound", commit, head=head)
        body = files[m["file"]]
        sha = hashlib.sha256(body).hexdigest()
        self._send(200, body, {"X-Repo-Commit": commit, "ETag": f'"{sha}"',
                               "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(body)),
                               "Content-Type": "application/octet-stream"}, head)
        hub.log.append(Served(time.time(), "HEAD" if head else "GET", m["repo"],
                              m["rev"], m["file"], 0 if head else len(body)))
