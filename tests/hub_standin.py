"""A stand-in for huggingface.co's Hub API: a real HTTP server on 127.0.0.1 that a test points ``HF_ENDPOINT`` at.

It is not the Hub. It answers exactly the calls huggingface_hub 2.4 makes for
``HfApi.create_repo(..., repo_type="dataset")`` and ``HfApi.upload_folder(..., delete_patterns=...)``
on its legacy LFS path, shaped like the real responses (read from the client's source,
``huggingface_hub/hf_api.py``, ``_commit_api.py``, ``lfs.py``):

    POST /api/repos/create                                  {name, organization, type, visibility?} -> {url}; 409 if it exists
    POST /api/validate-yaml                                 README.md front matter -> {errors, warnings}
    GET  /api/{type}s/{ns}/{name}/tree/{rev}                ?recursive=&expand= (listing for delete_patterns)
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]          repo_info (used after a no-op commit)
    POST /api/{type}s/{ns}/{name}/preupload/{rev}           {files: [{path, sample, size}]} -> uploadMode, shouldIgnore, oid
    POST /{datasets/}{ns}/{name}.git/info/lfs/objects/batch git-lfs batch API, "basic" transfer
    PUT  /lfs-storage/{oid}?X-Amz-Signature=...             plays the presigned S3 URL (no Authorization expected)
    POST /{datasets/}{ns}/{name}.git/info/lfs/objects/verify {oid, size}
    POST /api/{type}s/{ns}/{name}/commit/{rev}              application/x-ndjson: header, file, lfsFile, deletedFile, deletedFolder

A new repo gets one commit holding a ``.gitattributes`` that, like the Hub's, sends ``*.parquet``
(and other binary types) to LFS; the preupload endpoint answers "lfs" for those paths and for
files of 10 MB or more, "regular" otherwise. A commit is applied atomically to the in-memory
files; an ``lfsFile`` must name an uploaded object of that size, a ``deletedFile`` an existing
file, and a regular ``file`` must not hold binary content (the Hub rejects those too).

What it does not speak: Xet. With hf_xet installed, huggingface_hub uploads LFS-mode files
through Xet's CAS protocol; a client that tries (``GET .../xet-write-token/...``) gets a 501
saying to set ``HF_HUB_DISABLE_XET=1``, which sends huggingface_hub down its LFS path. Pull
requests (``create_pr``), revisions other than ``main`` and multipart LFS uploads are refused.

Every request is recorded in ``calls`` (method, path, query, parsed JSON or ndjson body, headers
with the Authorization value redacted), and every API request must carry
``Authorization: Bearer <token>``; the token anywhere else (a URL, a body, another header, the
storage upload) is written to ``violations``. A request no route answers is a 404 and is kept
in ``unhandled``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from standin_http import StandinHandler

# the start of the .gitattributes the Hub writes into a new data set repo (LFS part)
GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
"""
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends files of 10 MB or more to LFS whatever their name
TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+)/([^/]+)(?:/(tree|preupload|commit|revision|xet-write-token)/([^/]+)(/.*)?)?$")
LFS_REPO = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+)/([^/]+)\.git/info/lfs/objects/(batch|verify)$")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode()


@dataclass
class Call:
    """One request as the stand-in saw it; ``headers`` has the Authorization value redacted."""

    method: str
    path: str
    query: dict
    headers: dict
    json: object = None
    ndjson: list | None = None
    body_size: int = 0
    status: int = 0


@dataclass
class StoredFile:
    data: bytes
    lfs: bool


@dataclass
class Commit:
    oid: str
    summary: str
    operations: list[tuple[str, str]]  # (ndjson key, path), in payload order


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    files: dict[str, StoredFile] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)

    def lfs_patterns(self) -> list[str]:
        text = self.files[".gitattributes"].data.decode() if ".gitattributes" in self.files else ""
        return [ln.split()[0] for ln in text.splitlines() if "filter=lfs" in ln.split()[1:]]

    def tracked_by_lfs(self, path: str) -> bool:
        # gitattributes: a pattern without '/' matches the file name at any depth
        return any(fnmatch.fnmatchcase(path if "/" in p else path.rsplit("/", 1)[-1], p.lstrip("/")) for p in self.lfs_patterns())

    @property
    def head(self) -> str:
        return self.commits[-1].oid


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class HubStandin:
    """The server, its recorded calls and its repos; use as a context manager (``with HubStandin(token) as hub``)."""

    def __init__(self, token: str):
        self.token = token
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.unhandled: list[str] = []
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> bytes, once uploaded and verified
        self._pending: dict[str, bytes] = {}  # uploaded, not yet verified
        self._upload_keys: dict[str, str] = {}  # signature -> oid it may upload
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # lifecycle ------------------------------------------------------------------

    def __enter__(self) -> HubStandin:
        standin = self

        class Handler(_Handler):
            hub = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # for tests ------------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def seed(self, repo_id: str, files: dict[str, bytes], private: bool = False, repo_type: str = "dataset") -> None:
        """Create the repo (if needed) and commit ``files`` as regular files, as if a person had pushed them earlier."""
        with self._lock:
            repo = self.repos.get((repo_type, repo_id)) or self._create(repo_type, repo_id, private)
            repo.files.update({p: StoredFile(d, False) for p, d in files.items()})
            repo.commits.append(Commit(secrets.token_hex(20), "seeded by the test", [("file", p) for p in files]))

    def calls_to(self, method: str, suffix: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and re.search(suffix, c.path)]

    # state ----------------------------------------------------------------------

    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private, {".gitattributes": StoredFile(GITATTRIBUTES.encode(), False)})
        repo.commits.append(Commit(secrets.token_hex(20), "initial commit", [("file", ".gitattributes")]))
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def _repo(self, repo_type: str, ns: str, name: str) -> Repo:
        repo = self.repos.get((repo_type, f"{ns}/{name}"))
        if repo is None:
            raise HubError(404, f"Repository Not Found for url: {ns}/{name}", "RepoNotFound")
        return repo

    def _repo_url(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # routes ---------------------------------------------------------------------

    def route(self, call: Call, body: bytes) -> tuple[int, object]:
        path = call.path
        if call.method == "PUT" and path.startswith("/lfs-storage/"):
            return self._storage_put(path.removeprefix("/lfs-storage/"), call.query, body)
        if call.headers.get("authorization") != "Bearer [redacted]":
            raise HubError(401, "Invalid credentials in Authorization header")
        if call.method == "POST" and path == "/api/repos/create":
            return self._create_repo(call.json)
        if call.method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(call.json)
        if m := LFS_REPO.match(path):
            kind, ns, name, action = m.groups()
            repo = self._repo(TYPES.get(f"{kind}", "model") if kind else "model", ns, name)
            if call.method == "POST" and action == "batch":
                return self._lfs_batch(repo, call.json)
            if call.method == "POST" and action == "verify":
                return self._lfs_verify(call.json)
        if m := API_REPO.match(path):
            kind, ns, name, action, rev, rest = m.groups()
            repo = self._repo(TYPES[kind], ns, name)
            if action == "xet-write-token":
                raise HubError(501, "this Hub stand-in does not speak the Xet protocol: set HF_HUB_DISABLE_XET=1 so huggingface_hub uploads through LFS")
            if action is not None and unquote(rev) != "main":
                raise HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
            if call.method == "GET" and action in (None, "revision"):
                return 200, {"id": repo.repo_id, "sha": repo.head, "private": repo.private, "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
            if call.method == "GET" and action == "tree":
                return 200, self._tree(repo, unquote(rest or "/").strip("/"), call.query.get("recursive") == "true")
            if call.method == "POST" and action == "preupload":
                return self._preupload(repo, call)
            if call.method == "POST" and action == "commit":
                return self._commit(repo, call)
        self.unhandled.append(f"{call.method} {path}")
        raise HubError(404, f"the Hub stand-in has no route for {call.method} {path}")

    def _create_repo(self, payload: dict) -> tuple[int, dict]:
        unknown = set(payload) - {"name", "organization", "type", "visibility", "private"}
        if unknown:
            raise HubError(400, f"unexpected keys in create-repo payload: {sorted(unknown)}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else f"me/{payload['name']}"
        if (repo_type, repo_id) in self.repos:  # the Hub answers 409 with the url; private is left as it was
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": self._repo_url(self.repos[(repo_type, repo_id)])})
        private = payload.get("visibility") == "private" or payload.get("private") is True
        return 200, {"url": self._repo_url(self._create(repo_type, repo_id, private)), "name": repo_id}

    def _validate_yaml(self, payload: dict) -> tuple[int, dict]:
        import yaml

        content = payload.get("content", "")
        if not content.startswith("---\n"):
            return 200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata in repo card"}]}
        try:
            meta = yaml.safe_load(content.split("---\n")[1])
        except yaml.YAMLError as exc:
            return 400, {"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}
        if not isinstance(meta, dict):
            return 400, {"errors": [{"message": "the metadata must be a YAML mapping"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _tree(self, repo: Repo, under: str, recursive: bool) -> list[dict]:
        prefix = f"{under}/" if under else ""
        if under and under not in repo.files and not any(p.startswith(prefix) for p in repo.files):
            raise HubError(404, f"{under} does not exist on main", "EntryNotFound")
        entries, folders = [], set()
        for path, f in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            if len(parts) > 1:
                for i in range(1, len(parts) if recursive else 2):
                    folders.add(prefix + "/".join(parts[:i]))
                if not recursive:
                    continue
            entry = {"type": "file", "oid": git_blob_oid(lfs_pointer(f.data) if f.lfs else f.data), "size": len(f.data), "path": path}
            if f.lfs:
                entry["lfs"] = {"oid": hashlib.sha256(f.data).hexdigest(), "size": len(f.data), "pointerSize": len(lfs_pointer(f.data))}
            entries.append(entry)
        return [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d} for d in sorted(folders)] + entries

    def _preupload(self, repo: Repo, call: Call) -> tuple[int, dict]:
        if call.query.get("create_pr"):
            raise HubError(400, "the Hub stand-in does not open pull requests")
        out = []
        for f in call.json["files"]:
            base64.b64decode(f["sample"], validate=True)
            lfs = f["size"] >= LFS_MIN_SIZE or repo.tracked_by_lfs(f["path"])
            current = repo.files.get(f["path"])
            oid = None
            if current is not None:
                oid = hashlib.sha256(current.data).hexdigest() if current.lfs else git_blob_oid(current.data)
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return 200, {"files": out, "commitOid": repo.head}

    def _lfs_batch(self, repo: Repo, payload: dict) -> tuple[int, dict]:
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", []):
            raise HubError(400, f"the Hub stand-in only takes LFS uploads over the basic transfer, got {payload.get('operation')} / {payload.get('transfers')}")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "oid must be a sha256"}})
            elif oid in self.lfs_store:  # already stored: no actions, the client skips the upload
                objects.append({"oid": oid, "size": size})
            else:
                sig = secrets.token_hex(16)
                self._upload_keys[sig] = oid
                actions = {
                    "upload": {"href": f"{self.url}/lfs-storage/{oid}?X-Amz-Signature={sig}"},
                    "verify": {"href": f"{self._repo_url(repo)}.git/info/lfs/objects/verify"},
                }
                objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        return 200, {"transfer": "basic", "objects": objects}

    def _storage_put(self, oid: str, query: dict, body: bytes) -> tuple[int, dict]:
        if self._upload_keys.pop(query.get("X-Amz-Signature", ""), None) != oid:
            raise HubError(403, "SignatureDoesNotMatch")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "BadDigest: the uploaded bytes do not hash to the oid")
        self._pending[oid] = body
        return 200, {}

    def _lfs_verify(self, payload: dict) -> tuple[int, dict]:
        oid, size = payload.get("oid"), payload.get("size")
        data = self._pending.pop(oid, None) if oid not in self.lfs_store else self.lfs_store[oid]
        if data is None or len(data) != size:
            raise HubError(404, f"LFS object {oid} of size {size} was not uploaded")
        self.lfs_store[oid] = data
        return 200, {"success": True}

    def _commit(self, repo: Repo, call: Call) -> tuple[int, dict]:
        if call.query.get("create_pr"):
            raise HubError(400, "the Hub stand-in does not open pull requests")
        if call.headers.get("content-type") != "application/x-ndjson":
            raise HubError(400, f"commit payload must be application/x-ndjson, got {call.headers.get('content-type')}")
        lines = call.ndjson
        if not lines or lines[0].get("key") != "header" or not lines[0]["value"].get("summary"):
            raise HubError(400, "the first ndjson line must be the header with a summary")
        if (parent := lines[0]["value"].get("parentCommit")) and parent != repo.head:
            raise HubError(412, f"parent commit {parent} is not the head {repo.head}")
        files = dict(repo.files)
        ops = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if not path or path.startswith("/") or ".." in path.split("/"):
                raise HubError(400, f"bad path in {key}: {path!r}")
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, f"file {path}: encoding must be base64")
                data = base64.b64decode(value["content"], validate=True)
                if self.token.encode() in data:
                    self.violations.append(f"commit {repo.repo_id}: the token is in the content of {path}")
                if b"\0" in data[:8000]:
                    raise HubError(400, f"Your push was rejected because it contains binary files ({path}); store binary files with LFS/Xet")
                files[path] = StoredFile(data, False)
            elif key == "lfsFile":
                data = self.lfs_store.get(value.get("oid"))
                if value.get("algo") != "sha256" or data is None or len(data) != value.get("size"):
                    raise HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that does not exist ({path})")
                files[path] = StoredFile(data, True)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                gone = [p for p in files if p.startswith(path.rstrip("/") + "/")]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
            ops.append((key, path))
        oid = secrets.token_hex(20)
        repo.files = files
        repo.commits.append(Commit(oid, lines[0]["value"]["summary"], ops))
        return 200, {"success": True, "commitOid": oid, "commitUrl": f"{self._repo_url(repo)}/commit/{oid}", "pullRequestUrl": None}


class _Handler(StandinHandler):
    hub: HubStandin

    def _handle(self) -> None:
        hub = self.hub
        body = self._body()
        url = urlsplit(self.path)
        token = hub.token
        headers = {}
        for k, v in self.headers.items():
            if k.lower() == "authorization":
                v = "Bearer [redacted]" if v == f"Bearer {token}" else "[not the token]"
            elif token in v:
                hub.violations.append(f"{self.command} {url.path}: the token is in header {k}")
            headers[k.lower()] = v
        if token in unquote(self.path):
            hub.violations.append(f"{self.command} {url.path}: the token is in the URL")
        if token.encode() in body:
            hub.violations.append(f"{self.command} {url.path}: the token is in the body")
        call = Call(self.command, url.path, {k: v[-1] for k, v in parse_qs(url.query).items()}, headers, body_size=len(body))
        if url.path.startswith("/lfs-storage/") and "authorization" in headers:
            hub.violations.append(f"PUT {url.path}: an Authorization header went to the storage upload")
        with hub._lock:
            hub.calls.append(call)
            try:
                ctype = headers.get("content-type", "")
                if "ndjson" in ctype:
                    call.ndjson = [json.loads(ln) for ln in body.decode().splitlines() if ln.strip()]
                elif "json" in ctype and body:
                    call.json = json.loads(body)
                status, payload = hub.route(call, body)
                headers_out = {}
            except HubError as exc:
                status, payload = exc.status, {"error": exc.message, **exc.extra}
                headers_out = {"X-Error-Code": exc.code, "X-Error-Message": exc.message} if exc.code else {"X-Error-Message": exc.message}
            except (KeyError, TypeError, ValueError) as exc:  # a malformed request, not a stand-in crash
                status, payload, headers_out = 400, {"error": f"malformed request: {type(exc).__name__}: {exc}"}, {}
        call.status = status
        self._send(status, payload, headers_out)

    def _send(self, status: int, payload: object, headers: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _handle
