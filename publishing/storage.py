"""The experiment folder wherever `--storage_path` puts it: a local folder, or object storage (`s3://`, `gs://`, ...).

Object storage is reached through pyarrow's file systems, exactly as Ray Tune reaches it
(`pyarrow.fs.FileSystem.from_uri`), so our files and Tune's use the same credentials, region and
endpoint: the standard ones of each cloud's SDK (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, or the machine's role; AWS_DEFAULT_REGION; AWS_ENDPOINT_URL
for an S3-compatible server). Credentials never pass through here, and a location that carries them
(`s3://KEY:SECRET@bucket`, `?secret_key=`) is refused, since locations are written into files and logs.

Only small files go through these helpers (markers, publish state, publish.json, trials.csv, plots).
A model folder needs a file system: merged models are written to a local folder, never to a URI.
Local paths keep plain file semantics, and every write here is whole or absent: a temporary file beside the target,
flushed, then renamed over it (a full disk leaves the old file, never half of the new one); a write to object storage
replaces the object whole (one PUT), which is atomic there too.

A full or failing storage is an outcome, not a traceback: `storage_failure` decides, from the errors a sweep met and a
probe of the storage, whether the storage is what failed, and says so in one line (`StorageFailure.line`).
"""

import errno
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from trainables.errors import one_line

# query parameters of a storage URI that would put a credential into it (pyarrow reads these from S3 URIs)
SECRET_QUERY_KEYS = {"access_key", "secret_key", "session_token", "aws_access_key_id", "aws_secret_access_key",
                     "aws_session_token", "credentials"}


def is_remote(location) -> bool:
    return "://" in str(location)


def join(location, *parts: str) -> str:
    """`location`/part/...: a URI keeps its query (`?endpoint_override=...`) at the end."""
    if not is_remote(location):
        return str(Path(location, *parts))
    base, sep, query = str(location).partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def name(location) -> str:
    """The last component of a path or URI (without its query)."""
    return str(location).partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def credentials_in(location: str) -> str | None:
    """What in a storage URI is a credential (user info, or a secret query parameter), or None."""
    if not is_remote(location):
        return None
    # user:secret@bucket, also when the secret holds a '/' (which ends the netloc of a strictly parsed URI)
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://[^@?#]*:[^@?#]*@", location):
        return "credentials before the bucket (user:secret@)"
    secret = sorted(SECRET_QUERY_KEYS & {key.lower() for key in parse_qs(urlsplit(location).query)})
    return f"the query parameter {secret[0]}" if secret else None


def _fs(location):
    """(pyarrow file system, path on it) for a URI, as Ray Tune resolves it."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(str(location))


def _local(location) -> Path:
    return Path(location).expanduser()


def read_bytes(location) -> bytes:
    """The file's bytes; FileNotFoundError when there is none."""
    if not is_remote(location):
        return _local(location).read_bytes()
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"{location} does not exist")
    with fs.open_input_stream(path) as stream:
        return stream.readall()


def read_text(location) -> str:
    return read_bytes(location).decode()


def write_bytes(location, data: bytes) -> None:
    """Write the whole file at once: a local file by an atomic rename, an object by one PUT."""
    if not is_remote(location):
        _replace_whole(_local(location), lambda f: f.write(data))
        return
    fs, path = _fs(location)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def _replace_whole(path: Path, write) -> None:
    """`write(file)` into a temporary file beside `path`, flushed to the disk, then renamed over `path`: the file is
    the old one or the new one, never part of the new (a full disk fails the write; the temporary file goes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(location, text: str) -> None:
    write_bytes(location, text.encode())


def is_file(location) -> bool:
    if not is_remote(location):
        return _local(location).is_file()
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def _file_stat(location) -> tuple[int, float | None] | None:
    """(size in bytes, when last written) of a file, or None when it is not there."""
    if not is_remote(location):
        try:
            stat = _local(location).stat()
        except OSError:
            return None
        return stat.st_size, stat.st_mtime
    fs, path = _fs(location)
    info = fs.get_file_info(path)
    if not info.is_file:
        return None
    return info.size, info.mtime.timestamp() if info.mtime is not None else None


def mtime(location) -> float | None:
    """When the file was last written (seconds since the epoch), or None when it is not there."""
    return (_file_stat(location) or (0, None))[1]


def move(source, destination) -> None:
    """Rename a file (in object storage: copy, then delete)."""
    if not is_remote(source):
        _local(source).replace(_local(destination))
        return
    fs, path = _fs(source)
    fs.move(path, _fs(destination)[1])


def delete(location) -> None:
    if not is_remote(location):
        _local(location).unlink(missing_ok=True)
        return
    fs, path = _fs(location)
    fs.delete_file(path)


def folders(location) -> list[str]:
    """Names of the folders directly inside `location` ([] when it is not there)."""
    if not is_remote(location):
        folder = _local(location)
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    import pyarrow.fs

    fs, path = _fs(location)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return sorted(info.base_name for info in listing if info.type == pyarrow.fs.FileType.Directory)


def files(location, recursive: bool = False) -> list[str]:
    """Paths of the files under `location`, relative to it ([] when it is not there)."""
    if not is_remote(location):
        folder = _local(location)
        if not folder.is_dir():
            return []
        found = folder.rglob("*") if recursive else folder.iterdir()
        return sorted(str(p.relative_to(folder)) for p in found if p.is_file())
    import pyarrow.fs

    fs, path = _fs(location)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=recursive, allow_not_found=True))
    root = path.rstrip("/") + "/"
    return sorted(info.path[len(root):] for info in listing
                  if info.type == pyarrow.fs.FileType.File and info.path.startswith(root))


def upload(local_file, location) -> str:
    """Copy a local file to `location` (both local: whole, by a temporary file and a rename); returns `location`."""
    if not is_remote(location):
        if _local(local_file).resolve() != _local(location).resolve():
            with open(local_file, "rb") as source:
                _replace_whole(_local(location), lambda f: shutil.copyfileobj(source, f))
        return str(location)
    write_bytes(location, Path(local_file).read_bytes())
    return str(location)


PROBE_TIMEOUT_S = 30  # a storage that has not answered by then is not one to run a sweep on


def writable_problem(location: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why `location` (a URI, or a local folder) cannot hold experiments, in one line, or None: a probe object is written there, read
    back and deleted, the way every node will write checkpoints. A bad bucket, missing or wrong credentials and an
    unknown scheme all end here before anything starts; so does a storage that does not answer within `timeout_s`
    (pyarrow's clients retry for many minutes: gs:// without credentials never returned)."""
    probe = join(location, f".lora-sweep-write-probe-{uuid.uuid4().hex}")
    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            write_bytes(probe, b"probe")
            if read_bytes(probe) != b"probe":
                outcome.append("a probe written there read back differently")
                return
            delete(probe)
            outcome.append(None)
        except Exception as e:  # noqa: BLE001: pyarrow raises OSError, ArrowInvalid (a bad URI), ValueError, ...
            outcome.append(one_line(e, 300))

    # a daemon thread: one that never returns cannot keep the process from exiting with its error line
    worker = threading.Thread(target=attempt, name="storage-probe", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        return f"no answer within {timeout_s:g} s"
    return outcome[0]


# A storage that is full (ENOSPC, EDQUOT), read-only (EROFS) or failing (EIO): the errors that say the storage, not the
# sweep, is what went wrong. pyarrow's errors carry them too ("[Errno 28] Error writing bytes to file").
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
STORAGE_ERRNOS = FULL_ERRNOS | {errno.EROFS, errno.EIO}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
_STRERRORS = {os.strerror(code): code for code in STORAGE_ERRNOS}


def storage_errno(error: BaseException | str | None) -> int | None:
    """The storage errno (STORAGE_ERRNOS) an error carries, or None: in the error, its causes, or its text (a Ray task
    error holds the trial's OSError as text)."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error.errno
        text = _text(error)
        if code := _errno_in(text):
            return code
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return _errno_in(error) if isinstance(error, str) else None


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - an exception whose __str__ raises carries no errno we can read
        return ""


def _errno_in(text: str) -> int | None:
    for match in _ERRNO_IN_TEXT.finditer(text):
        if int(match.group(1)) in STORAGE_ERRNOS:
            return int(match.group(1))
    return next((code for message, code in _STRERRORS.items() if message in text), None)


@dataclass(frozen=True)
class DiskSpace:
    free: int   # bytes this process may still write
    total: int


def disk_space(location) -> DiskSpace | None:
    """Free and total bytes of the file system holding `location`; None for object storage or when unmeasurable."""
    if is_remote(location):
        return None
    path = _local(location)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return DiskSpace(usage.free, usage.total)


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 10 * 2**30 else f"{n / 2**20:.1f} MiB"


FULL, READ_ONLY, UNWRITABLE = "full", "read-only", "unwritable"


@dataclass(frozen=True)
class StorageFailure:
    """The storage, not the sweep, failed: how (FULL, READ_ONLY, UNWRITABLE), the error that says so, and its space."""
    location: str
    kind: str
    reason: str             # one line: the storage error, or the probe's
    space: DiskSpace | None = None

    def describe(self) -> str:
        """`storage /mnt/x is full (0.0 MiB free of 50.0 MiB)`."""
        if self.kind == FULL:
            how = f"{_size(self.space.free)} free of {_size(self.space.total)}" if self.space else self.reason
            return f"storage {self.location} is full ({how})"
        if self.kind == READ_ONLY:
            return f"storage {self.location} is read-only ({self.reason})"
        return f"storage {self.location} cannot be written ({self.reason})"

    def line(self, then: str) -> str:
        """What failed and what to do: `storage /mnt/x is full (0.0 MiB free of 50.0 MiB): free space, then {then}`."""
        advice = {FULL: "free space, then", READ_ONLY: "make it writable, then"}.get(self.kind, "once it can be written again,")
        return f"{self.describe()}: {advice} {then}"


def storage_failure(location: str, errors, probe_problem: str | None,
                    space: DiskSpace | None) -> StorageFailure | None:
    """Whether the storage is what failed: an error that carries a storage errno (full, quota, read-only, I/O), or a
    probe write that failed now. None when the storage shows nothing wrong (the errors are the sweep's own).
    `errors`: exceptions or their text; `probe_problem`: why a probe write failed (None: it was written)."""
    evidence = [e for e in [*errors, probe_problem] if e is not None and storage_errno(e) is not None]
    if not evidence and probe_problem is None:
        return None
    code = storage_errno(evidence[0]) if evidence else None
    reason = _reason(evidence[0] if evidence else probe_problem)
    kind = FULL if code in FULL_ERRNOS else READ_ONLY if code == errno.EROFS else UNWRITABLE
    return StorageFailure(str(location), kind, reason, space)


def _reason(error: BaseException | str) -> str:
    """The line of an error's text that holds its storage errno (a Ray task error's first line is only its header)."""
    text = error if isinstance(error, str) else _text(error)
    code = storage_errno(error)
    for line in text.splitlines():
        if code is not None and _errno_in(line) == code:
            return one_line(line.strip(), 160)
    return one_line(error, 160)


def sync_whole(local_dir, location, wanted) -> list[str]:
    """Copy each file under `local_dir` for which `wanted(relative path)` holds to the same place under `location`
    where the copy there is missing or differs in size (a copy cut short by a full disk), each whole
    (`_replace_whole`, or one PUT); the cut-short copy is deleted first, to make room. The relative paths that could
    not be copied, in the order tried (top-level files first)."""
    root = Path(local_dir)
    relatives = sorted((p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
                       key=lambda r: (r.count("/"), r))
    failed = []
    for relative in filter(wanted, relatives):
        source, target = root / relative, join(location, *relative.split("/"))
        try:
            if (_file_stat(target) or (None,))[0] == source.stat().st_size:
                continue
            if not is_remote(target):
                _local(target).unlink(missing_ok=True)
            upload(source, target)
        except OSError:
            failed.append(relative)
    return failed
