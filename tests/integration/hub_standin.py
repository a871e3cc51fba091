"""An in-memory stand-in for the Hugging Face Hub endpoints the registry mirror uses.

Speaks just enough of the Hub API for the real ``huggingface_hub`` client (xet disabled): repo
creation, refs, trees, paths-info, preupload, the LFS batch/upload/verify protocol, NDJSON commits
with ``parentCommit`` compare-and-swap (412 on mismatch), tags (409 when they exist), branches,
YAML validation and ``/resolve`` downloads. State lives in memory; ``fail_when`` makes requests
fail with HTTP 500 to simulate an outage; ``lfs_puts`` counts uploaded LFS objects.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@dataclass
class Entry:
    """A file in a tree: inline content or an LFS object id."""

    size: int
    content: bytes | None = None
    lfs_oid: str | None = None

    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.lfs_oid}\n"
                f"size {self.size}\n").encode()

    def json(self, path: str) -> dict:
        if self.lfs_oid is None:
            return {"type": "file", "oid": git_sha1(self.content or b""), "size": self.size, "path": path}
        ptr = self.pointer()
        return {"type": "file", "oid": git_sha1(ptr), "size": self.size, "path": path,
                "lfs": {"oid": self.lfs_oid, "size": self.size, "pointerSize": len(ptr)}}


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, Entry]
    message: str


@dataclass
class Repo:
    id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        oid = self.branches.get(rev) or self.tags.get(rev) or (rev if rev in self.commits else None)
        return self.commits.get(oid) if oid else None

    def log(self, rev: str) -> list[Commit]:
        out, c = [], self.resolve(rev)
        while c is not None:
            out.append(c)
            c = self.commits.get(c.parent) if c.parent else None
        return out


class HubStandin:
    """Threaded HTTP server on 127.0.0.1 with in-memory Hub state. Use as a context manager."""

    def __init__(self, lfs_threshold: int = 1024) -> None:
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_puts: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        self.auth_headers: list[str] = []
        self.fail_when: Callable[[str, str], bool] | None = None
        self.lock = threading.RLock()
        self._ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandin:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ----------------------------------------------------------- state ops
    def new_commit(self, repo: Repo, parent: str | None, tree: dict[str, Entry], message: str) -> str:
        seed = f"{repo.id}:{next(self._ids)}:{parent}:{message}".encode()
        oid = hashlib.sha1(seed).hexdigest()
        repo.commits[oid] = Commit(oid, parent, tree, message)
        return oid

    def create_repo(self, repo_id: str, private: bool) -> bool:
        with self.lock:
            if repo_id in self.repos:
                return False
            repo = Repo(repo_id, private)
            attrs = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n"
            repo.branches["main"] = self.new_commit(
                repo, None, {".gitattributes": Entry(len(attrs), content=attrs)}, "initial commit")
            self.repos[repo_id] = repo
            return True

    def file_bytes(self, repo_id: str, rev: str, path: str) -> bytes:
        entry = self.repos[repo_id].resolve(rev).tree[path]
        return entry.content if entry.lfs_oid is None else self.lfs[entry.lfs_oid]


def _make_handler(hub: HubStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        # --------------------------------------------------------- plumbing
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _send(self, status: int, body: object = None, headers: dict | None = None,
                  raw: bytes | None = None, head: bool = False) -> None:
            data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
            self.send_response(status)
            if raw is None:
                self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head and self.command != "HEAD":
                self.wfile.write(data)
            hub.requests.append((self.command, self.path, status))

        def _err(self, status: int, msg: str, code: str | None = None, extra: dict | None = None) -> None:
            self._send(status, {"error": msg, **(extra or {})}, {"X-Error-Code": code} if code else None)

        def _dispatch(self) -> None:
            auth = self.headers.get("authorization")
            if auth:
                hub.auth_headers.append(auth)
            body = self._body() if self.command in ("POST", "PUT") else b""
            if hub.fail_when is not None and hub.fail_when(self.command, self.path):
                self._err(500, "stand-in outage")
                return
            try:
                with hub.lock:
                    self._route(body)
            except Exception as e:  # noqa: BLE001 - a bug here should be visible, not hang
                self._err(500, f"stand-in bug: {type(e).__name__}: {e}")

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _dispatch

        # ---------------------------------------------------------- routing
        def _route(self, body: bytes) -> None:
            url = urlsplit(self.path)
            parts = url.path.split("/")[1:]  # raw: %2F stays encoded inside a segment
            query = parse_qs(url.query)
            m = self.command
            if parts[:2] == ["api", "whoami-v2"]:
                return self._send(200, {"name": "standin", "type": "user"})
            if parts[:2] == ["api", "validate-yaml"]:
                return self._send(200, {"errors": [], "warnings": []})
            if parts[:3] == ["api", "repos", "create"] and m == "POST":
                req = json.loads(body)
                repo_id = f"{req.get('organization') or 'standin'}/{req['name']}"
                created = hub.create_repo(repo_id, bool(req.get("private")))
                return self._send(200 if created else 409, {"url": f"{hub.url}/{repo_id}"})
            if parts[0] == "lfs-upload" and m == "PUT":
                oid = parts[1]
                if hashlib.sha256(body).hexdigest() != oid:
                    return self._err(400, "sha256 mismatch")
                hub.lfs[oid] = body
                hub.lfs_puts.append(oid)
                return self._send(200, {})
            if parts[0] == "lfs-verify":
                return self._send(200 if parts[1] in hub.lfs else 404, {})
            if len(parts) >= 3 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(f"{parts[0]}/{parts[1][:-4]}", json.loads(body))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", unquote(parts[3]), unquote("/".join(parts[4:])))
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo = hub.repos.get(f"{parts[2]}/{parts[3]}")
                if repo is None:
                    return self._err(404, "Repository not found", "RepoNotFound")
                return self._api(repo, parts[4:], query, body)
            return self._err(404, f"no route {m} {url.path}")

        def _api(self, repo: Repo, rest: list[str], query: dict, body: bytes) -> None:
            m = self.command
            op = rest[0] if rest else ""
            rev = unquote(rest[1]) if len(rest) > 1 else "main"
            if op in ("", "revision") and m == "GET":
                c = repo.resolve(rev)
                if c is None:
                    return self._err(404, "Invalid rev id", "RevisionNotFound")
                return self._send(200, {"id": repo.id, "modelId": repo.id, "sha": c.oid, "private": repo.private,
                                        "siblings": [{"rfilename": p} for p in sorted(c.tree)]})
            if op == "refs":
                ref = lambda kind, n, o: {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": o}  # noqa: E731
                return self._send(200, {"branches": [ref("heads", n, o) for n, o in repo.branches.items()],
                                        "tags": [ref("tags", n, o) for n, o in repo.tags.items()], "converts": []})
            if op == "tag" and m == "POST":
                c, tag = repo.resolve(rev), json.loads(body)["tag"]
                if c is None:
                    return self._err(404, "Invalid rev id", "RevisionNotFound")
                if tag in repo.tags:
                    return self._err(409, f"tag {tag} already exists")
                repo.tags[tag] = c.oid
                return self._send(200, {})
            if op == "tag" and m == "DELETE":
                repo.tags.pop(rev, None)
                return self._send(200, {})
            if op == "branch" and m == "POST":
                if rev in repo.branches:
                    return self._err(409, f"branch {rev} already exists")
                start = (json.loads(body) if body else {}).get("startingPoint") or "main"
                c = repo.resolve(start)
                if c is None:
                    return self._err(404, "Invalid rev id", "RevisionNotFound")
                repo.branches[rev] = c.oid
                return self._send(200, {})
            if op == "branch" and m == "DELETE":
                repo.branches.pop(rev, None)
                return self._send(200, {})
            c = repo.resolve(rev)
            if c is None:
                return self._err(404, "Invalid rev id", "RevisionNotFound")
            if op == "preupload":
                files = json.loads(body)["files"]
                return self._send(200, {"files": [
                    {"path": f["path"], "shouldIgnore": False, "oid": None,
                     "uploadMode": "lfs" if f["size"] >= hub.lfs_threshold or f["path"].endswith(".gguf") else "regular"}
                    for f in files]})
            if op == "paths-info":
                paths = parse_qs(body.decode()).get("paths", [])
                return self._send(200, [c.tree[p].json(p) for p in paths if p in c.tree])
            if op == "tree":
                prefix = unquote("/".join(rest[2:])).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._send(200, _tree_listing(c.tree, prefix, recursive))
            if op == "commit" and m == "POST":
                return self._commit(repo, rev, body)
            if op == "commits":
                return self._send(200, [{"id": x.oid, "title": x.message, "message": x.message,
                                         "authors": [], "date": "2026-01-01T00:00:00.000Z"} for x in repo.log(rev)])
            return self._err(404, f"no route {m} {op}")

        def _lfs_batch(self, repo_id: str, req: dict) -> None:
            if repo_id not in hub.repos:
                return self._err(404, "Repository not found", "RepoNotFound")
            objects = []
            for o in req["objects"]:
                if o["oid"] in hub.lfs:
                    objects.append({"oid": o["oid"], "size": o["size"]})
                else:
                    objects.append({"oid": o["oid"], "size": o["size"], "actions": {
                        "upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"},
                        "verify": {"href": f"{hub.url}/lfs-verify/{o['oid']}"}}})
            self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

        def _commit(self, repo: Repo, branch: str, body: bytes) -> None:
            lines = [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]
            header = lines[0]["value"]
            head = repo.branches.get(branch)
            if head is None:
                return self._err(404, "Invalid rev id", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and parent != head:
                return self._err(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head].tree)
            for ln in lines[1:]:
                key, v = ln["key"], ln["value"]
                if key == "file":
                    data = base64.b64decode(v["content"])
                    tree[v["path"]] = Entry(len(data), content=data)
                elif key == "lfsFile":
                    if v["oid"] not in hub.lfs:
                        return self._err(400, f"LFS object {v['oid']} was never uploaded")
                    tree[v["path"]] = Entry(len(hub.lfs[v["oid"]]), lfs_oid=v["oid"])
                elif key == "deletedFile":
                    if tree.pop(v["path"], None) is None:
                        return self._err(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = v["path"].rstrip("/") + "/"
                    for p in [p for p in tree if p.startswith(prefix)]:
                        del tree[p]
            oid = hub.new_commit(repo, head, tree, header.get("summary", ""))
            repo.branches[branch] = oid
            self._send(200, {"commitOid": oid, "commitUrl": f"{hub.url}/{repo.id}/commit/{oid}"})

        def _resolve(self, repo_id: str, rev: str, path: str) -> None:
            repo = hub.repos.get(repo_id)
            c = repo.resolve(rev) if repo else None
            if c is None or path not in c.tree:
                return self._err(404, "Entry not found", "EntryNotFound")
            entry = c.tree[path]
            data = entry.content if entry.lfs_oid is None else hub.lfs[entry.lfs_oid]
            etag = entry.lfs_oid or git_sha1(data)
            self._send(200, raw=data, head=self.command == "HEAD",
                       headers={"X-Repo-Commit": c.oid, "ETag": f'"{etag}"', "Content-Type": "application/octet-stream"})

    return Handler


def _tree_listing(tree: dict[str, Entry], prefix: str, recursive: bool) -> list[dict]:
    out: dict[str, dict] = {}
    base = prefix + "/" if prefix else ""
    for path, entry in sorted(tree.items()):
        if not path.startswith(base):
            continue
        rest = path[len(base):].split("/")
        for i in range(1, len(rest)):
            d = base + "/".join(rest[:i])
            out.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d})
            if not recursive:
                break
        if recursive or len(rest) == 1:
            out[path] = entry.json(path)
    return list(out.values())
