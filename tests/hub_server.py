"""A local stand-in for the Hugging Face Hub that the real `huggingface_hub` client can talk to.

`LocalHub` serves, on 127.0.0.1 and a free port, the part of the Hub API that publishing and
downloading a model needs: whoami, create/delete repo, repo settings (visibility), the upload
protocol (preupload, git-LFS batch + upload + verify, ndjson commit), model_info, the tree /
paths-info / refs / commits listings, and `/{repo}/resolve/{revision}/{path}` (HEAD and GET).
It is standard library only. File bytes are kept on disk under `root`, content addressed; the
repo and commit metadata lives in memory. Only the `main` branch exists.

Dataset repos are read-only over HTTP: seed one with `add_commit(..., repo_type="dataset")`,
then the client reads it the Hub's way (`dataset_info` at `/api/datasets/{repo}`, the
`/api/datasets/{repo}/tree|paths-info|refs|commits` listings, `/datasets/{repo}/resolve/...`),
which is all `snapshot_download(repo_type="dataset")` needs. A model and a dataset may share a
name, as on the Hub; `repos()` lists a dataset as `datasets/{repo_id}`.

How the client has to be set up (the `local_hub` fixture does all of it):

- Endpoint. Pass `endpoint=hub.url` to `HfApi`, `snapshot_download`, `hf_hub_download`.
  huggingface_hub reads `HF_ENDPOINT` once, when it is first imported (into
  `constants.ENDPOINT` and the resolve-URL template), so setting the variable later in the
  same process has no effect. It does work for a subprocess started with it in its
  environment; the fixture exports it for that reason.
- Xet. When `hf_xet` is installed, the client's upload path is Xet storage whatever the server
  says: `upload_folder` and `preupload_lfs_files` ask `/api/models/{repo}/xet-write-token/...`
  for a Xet CAS token and have no fallback. LocalHub does not speak Xet (those routes answer
  501 with a hint), so uploads need `HF_HUB_DISABLE_XET=1`; the client then uploads LFS files
  through the plain git-LFS batch API. Downloads only use Xet when the server advertises it
  (`X-Xet-Hash` / xet `Link` headers, `xetHash` in tree entries); LocalHub never does, so
  downloads are plain HTTP GETs of `/resolve/`.
- Tokens. The client sends `HF_TOKEN` or the saved login token when a call passes no token;
  the fixture removes both, so only the tokens a test passes reach the server.

Behaviour copied from the real Hub, which tests may rely on:

- A new repo gets an initial commit holding the standard `.gitattributes`, so `commits()` of a
  new repo has one sha and every snapshot has a `.gitattributes` file.
- The preupload endpoint picks "lfs" for a file that matches an LFS pattern of the repo's
  `.gitattributes` (`*.safetensors`, `*.bin`, `*.pt`, ...), is over 10 MiB, or whose first
  512 bytes hold a NUL byte (binary); otherwise "regular" (sent base64 inside the commit).
  The commit endpoint refuses regular files over 10 MiB or with binary content.
- Writes need `Authorization: Bearer <valid token>`: none or a wrong one gives 401. A wrong
  token is refused on reads too; a private repo reads as "repo not found" (401) without one.
- The LFS upload URL is pre-signed (an unguessable ticket in the path, no auth header), as the
  client sends the bytes there without its headers, like to S3.
- The client retries 429/5xx by itself (backing off from 1 s) on preupload, the LFS
  batch/upload/verify calls, the tree listing and file HEAD/GET, but not on create, settings,
  commit or model_info: one `fail_next` on the former shows up as a retry, on the latter as an
  `HfHubHTTPError` carrying the status.

Tokens never reach a log: request logging goes to the `tests.hub_server` logger at DEBUG with
the method, path and status only (no headers), and error messages never quote headers.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import logging
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

logger = logging.getLogger(__name__)

TEST_TOKEN = "hf_test_token"
DEFAULT_USER = "me"
MAIN = "main"
REPO_TYPES = ("model", "dataset")
REGULAR_FILE_MAX_SIZE = 10 * 1024 * 1024  # the Hub refuses larger files outside LFS
_CHUNK = 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# The .gitattributes the Hub writes into the initial commit of a new model repo.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
        "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
        "*.zst", "*tfevents*",
    )
)


# ----------------------------------------------------------------------------------------------
# Repository state
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One file of a commit's tree."""

    size: int
    blob_id: str  # git oid: of the content for a regular file, of the LFS pointer for an LFS file
    store: Path  # where the bytes are on disk
    lfs_sha256: str | None = None
    pointer_size: int | None = None

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None


@dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    tree: dict[str, _Entry]


@dataclass
class _Repo:
    repo_id: str
    private: bool
    created_at: str
    lfs_dir: Path
    gated: str | bool = False
    repo_type: str = "model"
    commits: list[_Commit] = field(default_factory=list)  # oldest first; the last is `main`

    @property
    def head(self) -> _Commit:
        return self.commits[-1]

    def resolve(self, revision: str | None) -> _Commit | None:
        """`main`, a full commit sha, or an unambiguous prefix of at least 7 hex characters."""
        revision = revision or MAIN
        if revision == MAIN:
            return self.head
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [c for c in self.commits if c.sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None


class _HubError(Exception):
    """An error answer: status, message, and the `X-Error-Code` the client maps to exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}
        self.body = body or {}  # extra JSON fields next to "error"


@dataclass
class _Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Path | None = None  # stream `length` bytes of this file from `offset` instead of `body`
    offset: int = 0
    length: int = 0


def _json_response(obj, status: int = 200, content_type: str = "application/json") -> _Response:
    return _Response(status, {"Content-Type": content_type}, json.dumps(obj).encode())


def _error_response(error: _HubError) -> _Response:
    response = _json_response({"error": error.message, **error.body}, error.status)
    # hf_raise_for_status reads these two headers to pick the exception class and message.
    response.headers["X-Error-Message"] = error.message.encode("ascii", "replace").decode()
    if error.code:
        response.headers["X-Error-Code"] = error.code
    response.headers.update(error.headers)
    return response


def _key(repo_id: str, repo_type: str = "model") -> str:
    """Where a repo is kept: its id for a model, `datasets/{id}` for a dataset (the Hub's URL prefix)."""
    if repo_type not in REPO_TYPES:
        raise ValueError(f"LocalHub hosts {REPO_TYPES} repos, not {repo_type!r}")
    return repo_id if repo_type == "model" else f"datasets/{repo_id}"


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _lfs_patterns(gitattributes: str) -> list[str]:
    """The path patterns that a .gitattributes sends through the LFS filter."""
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches_pattern(path: str, pattern: str) -> bool:
    # gitattributes: a pattern without a slash matches the file name at any depth.
    if "/" not in pattern:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/"))


def _wants_lfs(path: str, size: int, sample: bytes, lfs_patterns: list[str]) -> bool:
    """The Hub's preupload decision: LFS for big, binary, or .gitattributes-tracked files."""
    if size == 0:
        return False  # the client uploads empty files as regular ones anyway
    if size > REGULAR_FILE_MAX_SIZE or b"\0" in sample[:512]:
        return True
    return any(_matches_pattern(path, pattern) for pattern in lfs_patterns)


def _privacy(payload: dict) -> bool | None:
    """`visibility` ("public"/"private"), as huggingface_hub 1.x+ sends it, or the older `private`."""
    if "visibility" in payload:
        if payload["visibility"] not in ("public", "private"):
            raise _HubError(400, f"Unsupported visibility {payload['visibility']!r} for a model repo")
        return payload["visibility"] == "private"
    if "private" in payload and payload["private"] is not None:
        return bool(payload["private"])
    return None


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return any(value.lower() in ("1", "true") for value in query.get(name, []))


# ----------------------------------------------------------------------------------------------
# The hub
# ----------------------------------------------------------------------------------------------


class LocalHub:
    """A Hugging Face Hub imitation on http://127.0.0.1:PORT, for the real huggingface_hub client.

    Args:
        root: folder for the stored files; a temporary folder (removed by `stop`) when None.
        tokens: the valid tokens; a write needs `Authorization: Bearer <one of them>`.
        username: the user every valid token belongs to (whoami, default namespace).
    """

    FAULT_OPERATIONS = frozenset({
        "whoami", "create", "delete", "settings", "preupload", "lfs_batch", "lfs_upload",
        "lfs_verify", "commit", "model_info", "dataset_info", "tree", "refs", "commits", "download",
    })

    def __init__(self, root: str | Path | None = None, tokens: Iterable[str] = (TEST_TOKEN,),
                 username: str = DEFAULT_USER):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="local-hub-")) if root is None else Path(root)
        self._tokens = frozenset(tokens)
        self.username = username
        self._lock = threading.RLock()
        self._repos: dict[str, _Repo] = {}
        self._tickets: dict[str, tuple[str, str, int]] = {}  # LFS upload ticket -> (repo, oid, size)
        self._faults: dict[str, deque[int]] = {}
        self._log: list[tuple[str, str, int]] = []
        self._commit_counter = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> "LocalHub":
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        for sub in ("blobs", "lfs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._server = _Server(("127.0.0.1", 0), _Handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- inspection for tests ---------------------------------------------------------------

    def repos(self) -> list[str]:
        with self._lock:
            return sorted(self._repos)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[str]:
        """Commit shas of `main`, oldest first (the first is the repo's initial commit)."""
        with self._lock:
            return [c.sha for c in self._repo(_key(repo_id, repo_type)).commits]

    def files(self, repo_id: str, revision: str | None = None, repo_type: str = "model") -> dict[str, bytes]:
        """path -> content of every file at `revision` (a sha or "main"; default main)."""
        tree = self._tree(_key(repo_id, repo_type), revision)
        return {path: entry.store.read_bytes() for path, entry in tree.items()}

    def lfs_files(self, repo_id: str, revision: str | None = None) -> set[str]:
        """The paths stored through LFS at `revision`."""
        return {path for path, entry in self._tree(repo_id, revision).items() if entry.is_lfs}

    def is_private(self, repo_id: str) -> bool:
        with self._lock:
            return self._repo(repo_id).private

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """(method, path without query, status) of every request served so far."""
        with self._lock:
            return list(self._log)

    # -- seeding and faults -----------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool = False, repo_type: str = "model") -> str:
        """Create a repo directly (no HTTP); returns the sha of its initial commit."""
        with self._lock:
            return self._create_repo(repo_id, private, repo_type).head.sha

    def add_commit(self, repo_id: str, files: dict[str, bytes], message: str = "Upload files",
                   repo_type: str = "model") -> str:
        """Commit `files` to main directly (creating a public repo if needed); returns the sha."""
        with self._lock:
            repo = self._repos.get(_key(repo_id, repo_type)) or self._create_repo(repo_id, False, repo_type)
            patterns = self._lfs_patterns_of(repo.head)
            tree = dict(repo.head.tree)
            for path, data in files.items():
                if _wants_lfs(path, len(data), data[:512], patterns):
                    oid = hashlib.sha256(data).hexdigest()
                    (repo.lfs_dir / oid).write_bytes(data)
                    tree[path] = self._lfs_entry(repo, oid, len(data))
                else:
                    tree[path] = self._store_regular(data)
            return self._append_commit(repo, tree, message, "").sha

    def fail_next(self, operation: str, times: int = 1, status: int = 500) -> None:
        """Make the next `times` requests of `operation` fail with `status`.

        Operations: create, settings, preupload, lfs_batch, lfs_upload (the PUT of the bytes),
        lfs_verify, commit, model_info, tree (tree listing and paths-info), refs, commits,
        download (HEAD and GET of /resolve/), whoami, delete, dataset_info (the dataset
        counterpart of model_info; the listings and downloads of a dataset share the model names).
        """
        if operation not in self.FAULT_OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {sorted(self.FAULT_OPERATIONS)}")
        with self._lock:
            self._faults.setdefault(operation, deque()).extend([status] * times)

    # -- state, used by the handler (callers hold no lock; these take it) -------------------

    def _repo(self, key: str) -> _Repo:
        """The repo kept under `key` (see `_key`: a model's id, or `datasets/{id}`)."""
        with self._lock:
            repo = self._repos.get(key)
        if repo is None:
            raise KeyError(f"no repo {key!r} on this LocalHub")
        return repo

    def _tree(self, key: str, revision: str | None) -> dict[str, _Entry]:
        with self._lock:
            commit = self._repo(key).resolve(revision)
        if commit is None:
            raise KeyError(f"no revision {revision!r} in {key!r}")
        return commit.tree

    def _is_valid_token(self, token: str) -> bool:
        return token in self._tokens

    def _take_fault(self, operation: str) -> int | None:
        with self._lock:
            queue = self._faults.get(operation)
            return queue.popleft() if queue else None

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._log.append((method, path, status))

    def _create_repo(self, repo_id: str, private: bool, repo_type: str = "model") -> _Repo:
        namespace, _, name = repo_id.partition("/")
        if not (_NAME.fullmatch(namespace) and _NAME.fullmatch(name)):
            raise _HubError(400, f"Invalid repo name {repo_id!r}")
        key = _key(repo_id, repo_type)
        with self._lock:
            if key in self._repos:
                # create_repo(exist_ok=True) accepts a 409 and then reads `url` from its body.
                raise _HubError(409, f"You already created this {repo_type} repo",
                                body={"url": f"{self.url}/{key}"})
            lfs_dir = self.root / "lfs" / key  # a model and a dataset of the same name stay apart
            lfs_dir.mkdir(parents=True, exist_ok=True)
            repo = _Repo(repo_id, private, _now(), lfs_dir, repo_type=repo_type)
            self._repos[key] = repo
            gitattributes = self._store_regular(DEFAULT_GITATTRIBUTES.encode())
            self._append_commit(repo, {".gitattributes": gitattributes}, "initial commit", "")
            return repo

    def _delete_repo(self, repo_id: str) -> None:
        with self._lock:
            if self._repos.pop(repo_id, None) is None:
                raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")

    def _store_regular(self, data: bytes) -> _Entry:
        blob_id = _git_blob_id(data)
        path = self.root / "blobs" / blob_id
        if not path.exists():
            tmp = self.root / "tmp" / secrets.token_hex(8)
            tmp.write_bytes(data)
            tmp.replace(path)
        return _Entry(size=len(data), blob_id=blob_id, store=path)

    @staticmethod
    def _lfs_entry(repo: _Repo, oid: str, size: int) -> _Entry:
        pointer = _lfs_pointer(oid, size)
        return _Entry(size=size, blob_id=_git_blob_id(pointer), store=repo.lfs_dir / oid,
                      lfs_sha256=oid, pointer_size=len(pointer))

    @staticmethod
    def _lfs_patterns_of(commit: _Commit) -> list[str]:
        entry = commit.tree.get(".gitattributes")
        return _lfs_patterns(entry.store.read_text(errors="replace")) if entry else []

    def _append_commit(self, repo: _Repo, tree: dict[str, _Entry], title: str, message: str) -> _Commit:
        with self._lock:
            parent = repo.commits[-1].sha if repo.commits else None
            self._commit_counter += 1
            digest = json.dumps([repo.repo_id, parent, sorted((p, e.blob_id) for p, e in tree.items()),
                                 title, message, self._commit_counter, time.time_ns()])
            commit = _Commit(hashlib.sha1(digest.encode()).hexdigest(), parent, title, message, _now(), tree)
            repo.commits.append(commit)
            return commit

    def _new_upload_ticket(self, repo_id: str, oid: str, size: int) -> str:
        ticket = secrets.token_hex(16)
        with self._lock:
            self._tickets[ticket] = (repo_id, oid, size)
        return ticket

    def _ticket(self, ticket: str) -> tuple[str, str, int] | None:
        with self._lock:
            return self._tickets.get(ticket)


# ----------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, hub: LocalHub):
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        """End kept-alive client connections so their handler threads finish."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV = r"(?P<rev>[^/]+)"

# Dataset repos, read-only: the same handlers, reached under the Hub's dataset URLs. The router
# hands them the repo as `datasets/{repo}`, the key the hub keeps datasets under.
_DATASET_ROUTES = [
    (("GET",), r"/api/datasets/{repo}", "dataset_info", "model_info"),
    (("GET",), r"/api/datasets/{repo}/revision/{rev}", "dataset_info", "model_info"),
    (("GET",), r"/api/datasets/{repo}/tree/{rev}(?:/(?P<path>.*))?", "tree", "tree"),
    (("POST",), r"/api/datasets/{repo}/paths-info/{rev}", "tree", "paths_info"),
    (("GET",), r"/api/datasets/{repo}/refs", "refs", "refs"),
    (("GET",), r"/api/datasets/{repo}/commits/{rev}", "commits", "list_commits"),
    (("GET", "HEAD"), r"/datasets/{repo}/resolve/{rev}/(?P<path>.+)", "download", "resolve"),
]

# (methods, path regex, operation name for fail_next and the log, handler method, repo type)
_ROUTES: list[tuple[tuple[str, ...], re.Pattern, str, str, str]] = [
    (methods, re.compile(pattern.replace("{repo}", _REPO).replace("{rev}", _REV)), operation, handler,
     "dataset" if pattern.startswith(("/api/datasets/", "/datasets/")) else "model")
    for methods, pattern, operation, handler in _DATASET_ROUTES + [
        (("GET",), r"/api/whoami-v2", "whoami", "whoami"),
        (("POST",), r"/api/repos/create", "create", "create_repo"),
        (("DELETE",), r"/api/repos/delete", "delete", "delete_repo"),
        (("POST",), r"/api/validate-yaml", "validate_yaml", "validate_yaml"),
        (("GET",), r"/api/models/{repo}", "model_info", "model_info"),
        (("GET",), r"/api/models/{repo}/revision/{rev}", "model_info", "model_info"),
        (("PUT",), r"/api/models/{repo}/settings", "settings", "update_settings"),
        (("POST",), r"/api/models/{repo}/preupload/{rev}", "preupload", "preupload"),
        (("POST",), r"/api/models/{repo}/commit/{rev}", "commit", "commit"),
        (("GET",), r"/api/models/{repo}/tree/{rev}(?:/(?P<path>.*))?", "tree", "tree"),
        (("POST",), r"/api/models/{repo}/paths-info/{rev}", "tree", "paths_info"),
        (("GET",), r"/api/models/{repo}/refs", "refs", "refs"),
        (("GET",), r"/api/models/{repo}/commits/{rev}", "commits", "list_commits"),
        (("GET", "POST"), r"/api/models/{repo}/xet-[a-z]+-token/.*", "xet", "xet_unsupported"),
        (("POST",), r"/{repo}\.git/info/lfs/objects/batch", "lfs_batch", "lfs_batch"),
        (("POST",), r"/{repo}\.git/info/lfs/objects/verify", "lfs_verify", "lfs_verify"),
        (("PUT",), r"/lfs-upload/(?P<ticket>[0-9a-f]{32})", "lfs_upload", "lfs_upload"),
        (("GET", "HEAD"), r"/{repo}/resolve/{rev}/(?P<path>.+)", "download", "resolve"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client pools connections
    server_version = "LocalHub/1.0"
    server: _Server

    # -- plumbing ---------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args) -> None:
        # Never the headers (they carry the token): the request line and status only.
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    @property
    def hub(self) -> LocalHub:
        return self.server.hub

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self._body_iter: Iterator[bytes] | None = None
        try:
            response = self._route(url.path)
        except _HubError as error:
            response = _error_response(error)
        except Exception as error:  # a LocalHub bug: answer it rather than hang the client
            logger.exception("LocalHub failed on %s %s", self.command, url.path)
            response = _error_response(_HubError(500, f"LocalHub internal error: {error!r}"))
        for _ in self._body():  # read what the handler left, so the connection stays usable
            pass
        self.hub._record(self.command, url.path, response.status)  # before the client can see the answer
        self._send(response)

    def _route(self, path: str) -> _Response:
        for methods, pattern, operation, handler, repo_type in _ROUTES:
            match = pattern.fullmatch(path)
            if match and self.command in methods:
                status = self.hub._take_fault(operation)
                if status is not None:
                    raise _HubError(status, f"LocalHub: injected failure of '{operation}'")
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                if "repo" in params:
                    params["repo"] = _key(params["repo"], repo_type)
                return getattr(self, handler)(**params)
        raise _HubError(404, f"LocalHub has no route for {self.command} {path}")

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        length = response.length if response.file is not None else len(response.body)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        with open(response.file, "rb") as f:
            f.seek(response.offset)
            remaining = length
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    # -- request body -----------------------------------------------------------------------

    def _body(self) -> Iterator[bytes]:
        """The request body as chunks; one shared iterator, so a later call resumes it."""
        if self._body_iter is None:
            self._body_iter = self._read_body()
        return self._body_iter

    def _read_body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()  # the CRLF closing the chunk
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, size: int) -> Iterator[bytes]:
        while size > 0:
            chunk = self.rfile.read(min(_CHUNK, size))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            size -= len(chunk)
            yield chunk

    def _json(self):
        try:
            return json.loads(b"".join(self._body()) or b"{}")
        except ValueError:
            raise _HubError(400, "Request body is not valid JSON") from None

    # -- auth -------------------------------------------------------------------------------

    def _user(self, *, required: bool) -> str | None:
        """The user of a valid Bearer token; 401 for a wrong token, or for none when required."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            if required:
                raise _HubError(401, "You must be authenticated (send a Bearer token) to do this")
            return None
        if not self.hub._is_valid_token(token):
            # The Hub's message for a bad token; the client keeps it a plain HfHubHTTPError.
            raise _HubError(401, "Invalid credentials in Authorization header")
        return self.hub.username

    def _readable(self, repo_id: str) -> _Repo:
        user = self._user(required=False)
        with self.hub._lock:
            repo = self.hub._repos.get(repo_id)
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        if repo.private and user is None:
            raise _HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _writable(self, repo_id: str) -> _Repo:
        self._user(required=True)
        return self._readable(repo_id)

    @staticmethod
    def _commit_at(repo: _Repo, rev: str | None) -> _Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # -- account and repo management --------------------------------------------------------

    def whoami(self) -> _Response:
        user = self._user(required=True)
        return _json_response({
            "type": "user", "id": f"local-{user}", "name": user, "fullname": user, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
        })

    def create_repo(self) -> _Response:
        user = self._user(required=True)
        payload = self._json()
        if (payload.get("type") or "model") != "model":
            raise _HubError(400, "LocalHub only hosts model repos")
        if not payload.get("name"):
            raise _HubError(400, "A repo needs a name")
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        # Public unless asked otherwise. A taken name answers 409, which exist_ok=True accepts.
        self.hub._create_repo(repo_id, private=bool(_privacy(payload)))
        return _json_response({"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def delete_repo(self) -> _Response:
        user = self._user(required=True)
        payload = self._json()
        repo_id = f"{payload.get('organization') or user}/{payload.get('name')}"
        self.hub._delete_repo(repo_id)
        return _json_response({})

    def update_settings(self, repo: str) -> _Response:
        target = self._writable(repo)
        payload = self._json()
        private = _privacy(payload)
        if private is None and "gated" not in payload:
            raise _HubError(400, "No setting to update")
        with self.hub._lock:
            if private is not None:
                target.private = private
            if "gated" in payload:
                target.gated = payload["gated"]
        return _json_response({})

    def validate_yaml(self) -> _Response:
        # upload_folder/create_commit post a README.md here before committing it; accept all.
        self._json()
        return _json_response({"errors": [], "warnings": []})

    def xet_unsupported(self, repo: str) -> _Response:
        raise _HubError(501, "LocalHub does not support Xet storage: set HF_HUB_DISABLE_XET=1 "
                             "(huggingface_hub.constants.HF_HUB_DISABLE_XET = True) so the client uses git-LFS")

    # -- reading ----------------------------------------------------------------------------

    def model_info(self, repo: str, rev: str | None = None) -> _Response:
        target = self._readable(repo)
        commit = self._commit_at(target, rev)
        with_blobs = _flag(self.query, "blobs")  # sent by model_info(files_metadata=True)
        siblings = []
        for path, entry in sorted(commit.tree.items()):
            sibling: dict = {"rfilename": path}
            if with_blobs:
                sibling.update(size=entry.size, blobId=entry.blob_id)
                if entry.is_lfs:
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.lfs_sha256,
                                      "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        repo_id = target.repo_id  # `repo` is the hub's key: `datasets/{id}` for a dataset
        namespace = repo_id.split("/")[0]
        return _json_response({
            "_id": f"local-{repo}", "id": repo_id, "modelId": repo_id, "author": namespace, "sha": commit.sha,
            "lastModified": commit.date, "createdAt": target.created_at, "private": target.private,
            "gated": target.gated, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        })

    def _tree_item(self, path: str, entry: _Entry | None) -> dict:
        if entry is None:  # a folder
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        item = {"type": "file", "oid": entry.blob_id, "size": entry.size, "path": path}
        if entry.is_lfs:
            item["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        return item

    @staticmethod
    def _folders(tree: dict[str, _Entry]) -> set[str]:
        """Every folder that holds a file, at any depth ("a", "a/b" for "a/b/c.txt")."""
        return {"/".join(parts[:i]) for parts in (path.split("/") for path in tree) for i in range(1, len(parts))}

    def tree(self, repo: str, rev: str, path: str = "") -> _Response:
        commit = self._commit_at(self._readable(repo), rev)
        recursive = _flag(self.query, "recursive")
        folders = self._folders(commit.tree)
        base = path.strip("/")
        if base and base not in folders:
            raise _HubError(404, f"{base} does not exist at {rev}", "EntryNotFound")
        prefix = f"{base}/" if base else ""
        items = []
        for name in sorted(folders | set(commit.tree)):
            if not name.startswith(prefix) or (not recursive and "/" in name[len(prefix):]):
                continue
            items.append(self._tree_item(name, commit.tree.get(name)))
        return _json_response(items)  # one page: no `Link: <...>; rel="next"` header

    def paths_info(self, repo: str, rev: str) -> _Response:
        commit = self._commit_at(self._readable(repo), rev)
        form = parse_qs(b"".join(self._body()).decode())  # sent form-encoded: paths=a&paths=b&expand=False
        folders = self._folders(commit.tree)
        items = [self._tree_item(p, commit.tree.get(p)) for p in form.get("paths", [])
                 if p in commit.tree or p in folders]
        return _json_response(items)

    def refs(self, repo: str) -> _Response:
        head = self._readable(repo).head.sha
        return _json_response({
            "branches": [{"name": MAIN, "ref": f"refs/heads/{MAIN}", "targetCommit": head}],
            "converts": [], "tags": [], "pullRequests": [],
        })

    def list_commits(self, repo: str, rev: str) -> _Response:
        target = self._readable(repo)
        commit = self._commit_at(target, rev)
        history = target.commits[: target.commits.index(commit) + 1]
        return _json_response([
            {"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
             "authors": [{"user": self.hub.username}]}
            for c in reversed(history)
        ])

    def resolve(self, repo: str, rev: str, path: str) -> _Response:
        target = self._readable(repo)
        commit = self._commit_at(target, rev)
        entry = commit.tree.get(path)
        if entry is None:
            raise _HubError(404, f"Entry {path} not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        headers = {
            "X-Repo-Commit": commit.sha,  # the client caches the file under this commit
            "ETag": f'"{entry.lfs_sha256 or entry.blob_id}"',  # and the blob under this etag
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if entry.is_lfs:
            # The Hub redirects LFS files to a CDN and describes the real file in these headers;
            # LocalHub serves the bytes itself, with the same headers.
            headers.update({"X-Linked-Etag": f'"{entry.lfs_sha256}"', "X-Linked-Size": str(entry.size)})
        start, end = self._range(entry.size)
        if (start, end) != (0, entry.size):
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry.size}"
        status = 206 if "Content-Range" in headers else 200
        return _Response(status, headers, file=entry.store, offset=start, length=end - start)

    def _range(self, size: int) -> tuple[int, int]:
        """[start, end) from a `Range: bytes=a-b` header (the client sends `a-` to resume)."""
        header = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip()) if header else None
        if header is None:
            return 0, size
        if match is None or not (match[1] or match[2]):
            raise _HubError(416, f"Unsupported Range {header!r}")
        if match[1]:
            start, end = int(match[1]), int(match[2]) + 1 if match[2] else size
        else:  # suffix range: the last N bytes
            start, end = max(size - int(match[2]), 0), size
        if start >= size > 0:
            raise _HubError(416, f"Range {header!r} is past the end of the file",
                            headers={"Content-Range": f"bytes */{size}"})
        return start, min(end, size)

    # -- uploading --------------------------------------------------------------------------

    def preupload(self, repo: str, rev: str) -> _Response:
        """Tell the client, per file, whether to send it in the commit or through LFS first."""
        target = self._writable(repo)
        commit = self._commit_at(target, rev)
        patterns = self.hub._lfs_patterns_of(commit)
        answers = []
        for file in self._json().get("files", []):
            path, size = file["path"], int(file["size"])
            sample = base64.b64decode(file.get("sample") or "")
            mode = "lfs" if _wants_lfs(path, size, sample, patterns) else "regular"
            answer = {"path": path, "uploadMode": mode, "shouldIgnore": False}
            existing = commit.tree.get(path)
            if existing is not None:
                # The client skips files whose oid it computes the same: sha256 for LFS files,
                # the git blob sha1 for regular ones.
                answer["oid"] = existing.lfs_sha256 if mode == "lfs" else existing.blob_id
            answers.append(answer)
        return _json_response({"files": answers, "commitOid": commit.sha})

    def lfs_batch(self, repo: str) -> _Response:
        """git-LFS batch API: an upload action (pre-signed URL) for each object not stored yet."""
        target = self._writable(repo)
        payload = self._json()
        if payload.get("operation") != "upload":
            raise _HubError(400, "LocalHub's LFS batch API only supports the upload operation")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not (isinstance(oid, str) and _HEX64.fullmatch(oid) and isinstance(size, int) and size >= 0):
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "oid must be a sha256 and size an int"}})
                continue
            stored = target.lfs_dir / oid
            if stored.exists() and stored.stat().st_size == size:
                objects.append({"oid": oid, "size": size})  # no actions: the client skips it
                continue
            ticket = self.hub._new_upload_ticket(repo, oid, size)
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{self.hub.url}/lfs-upload/{ticket}", "expires_in": 3600},
                "verify": {"href": f"{self.hub.url}/{repo}.git/info/lfs/objects/verify"},
            }})
        return _json_response({"transfer": "basic", "objects": objects},
                              content_type="application/vnd.git-lfs+json")

    def lfs_upload(self, ticket: str) -> _Response:
        """The PUT of an LFS object's bytes. No auth header comes here: the ticket is the proof."""
        found = self.hub._ticket(ticket)
        if found is None:
            raise _HubError(403, "Unknown or expired upload URL")
        repo_id, oid, size = found
        tmp = self.hub.root / "tmp" / secrets.token_hex(8)
        digest, received = hashlib.sha256(), 0
        with open(tmp, "wb") as f:
            for chunk in self._body():
                digest.update(chunk)
                received += len(chunk)
                f.write(chunk)
        if (digest.hexdigest(), received) != (oid, size):
            tmp.unlink()
            raise _HubError(400, f"Uploaded content does not match oid {oid} and size {size}")
        try:
            lfs_dir = self.hub._repo(repo_id).lfs_dir
        except KeyError:
            tmp.unlink()
            raise _HubError(404, f"Repository {repo_id} not found", "RepoNotFound") from None
        tmp.replace(lfs_dir / oid)
        return _Response(200, {"ETag": f'"{oid}"'})

    def lfs_verify(self, repo: str) -> _Response:
        target = self._writable(repo)
        payload = self._json()
        stored = target.lfs_dir / str(payload.get("oid"))
        if not (_HEX64.fullmatch(str(payload.get("oid"))) and stored.exists()
                and stored.stat().st_size == payload.get("size")):
            raise _HubError(404, f"LFS object {payload.get('oid')} was not uploaded")
        return _json_response({})

    def commit(self, repo: str, rev: str) -> _Response:
        """The ndjson commit: a header line, then one line per file added, LFS file, or deletion."""
        target = self._writable(repo)
        if rev != MAIN:
            self._commit_at(target, rev)  # 404 RevisionNotFound for an unknown revision
            raise _HubError(400, f"LocalHub only commits to the {MAIN} branch, not {rev!r}")
        if _flag(self.query, "create_pr"):
            raise _HubError(400, "LocalHub does not support pull requests")
        lines = [json.loads(line) for line in b"".join(self._body()).splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "A commit starts with a header line")
        header = lines[0]["value"]
        if not header.get("summary"):
            raise _HubError(400, "A commit needs a summary")
        with self.hub._lock:  # check the parent and build the tree against one head
            head = target.head
            parent = header.get("parentCommit")
            if parent and not head.sha.startswith(parent):
                raise _HubError(412, f"Parent commit {parent} is not the head of {MAIN} ({head.sha})")
            tree = dict(head.tree)
            for line in lines[1:]:
                self._apply_operation(target, tree, line.get("key"), line.get("value") or {})
            new = self.hub._append_commit(target, tree, header["summary"], header.get("description") or "")
        return _json_response({"success": True, "commitOid": new.sha, "hookOutput": "",
                               "commitUrl": f"{self.hub.url}/{repo}/commit/{new.sha}",
                               "pullRequestUrl": None})

    def _apply_operation(self, repo: _Repo, tree: dict[str, _Entry], key: str, value: dict) -> None:
        path = str(value.get("path", "")).strip("/")
        if not path or ".." in path.split("/"):
            raise _HubError(400, f"Invalid path {path!r}")
        if key == "file":
            data = base64.b64decode(value.get("content", "")) if value.get("encoding") == "base64" \
                else str(value.get("content", "")).encode()
            if len(data) > REGULAR_FILE_MAX_SIZE or b"\0" in data[:512]:
                raise _HubError(400, f"{path}: binary files and files over 10 MiB must be uploaded with LFS")
            tree[path] = self.hub._store_regular(data)
        elif key == "lfsFile":
            oid = str(value.get("oid"))
            stored = repo.lfs_dir / oid
            if not (_HEX64.fullmatch(oid) and stored.exists()):
                raise _HubError(422, f"{path}: LFS object {oid} was not uploaded to this repo")
            size = stored.stat().st_size
            if value.get("size") not in (None, size):
                raise _HubError(422, f"{path}: LFS object {oid} has size {size}, not {value.get('size')}")
            tree[path] = self.hub._lfs_entry(repo, oid, size)
        elif key == "deletedFile":
            if tree.pop(path, None) is None:
                raise _HubError(404, f"File {path} does not exist", "EntryNotFound")
        elif key == "deletedFolder":
            inside = [p for p in tree if p.startswith(path + "/")]
            if not inside:
                raise _HubError(404, f"Folder {path} does not exist", "EntryNotFound")
            for p in inside:
                del tree[p]
        else:
            raise _HubError(400, f"Unknown commit operation {key!r}")


# ----------------------------------------------------------------------------------------------
# pytest
# ----------------------------------------------------------------------------------------------


def point_client_at_local_hub(monkeypatch: pytest.MonkeyPatch, hub: LocalHub, scratch: Path) -> None:
    """Make huggingface_hub in this process (and subprocesses) safe to use against `hub`.

    - Xet off (`HF_HUB_DISABLE_XET`, read by the client at each call), so uploads use git-LFS.
    - No ambient token: `HF_TOKEN`/`HUGGING_FACE_HUB_TOKEN` removed and the saved-login file
      pointed at a missing file, so a call sends only the token it is given.
    - Downloads cached under `scratch`, not in the user's ~/.cache/huggingface.
    - `HF_ENDPOINT` exported for subprocesses (this process has read it already: pass
      `endpoint=hub.url`).
    """
    import huggingface_hub.constants as hf_constants  # import first: HF_ENDPOINT below must not reach it

    cache = scratch / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(scratch / "no-saved-token"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A running LocalHub (valid token "hf_test_token", user "me"), files under tmp_path.

    The client is prepared by `point_client_at_local_hub`; calls still pass `endpoint=hub.url`.
    """
    with LocalHub(tmp_path / "local-hub", tokens={TEST_TOKEN}) as hub:
        point_client_at_local_hub(monkeypatch, hub, tmp_path)
        yield hub
