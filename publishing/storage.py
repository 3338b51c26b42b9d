"""The experiment folder wherever `--storage_path` puts it: a local folder, or object storage (`s3://`, `gs://`, ...).

Object storage is reached through pyarrow's file systems, exactly as Ray Tune reaches it
(`pyarrow.fs.FileSystem.from_uri`), so our files and Tune's use the same credentials, region and
endpoint: the standard ones of each cloud's SDK (for S3: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws, or the machine's role; AWS_DEFAULT_REGION; AWS_ENDPOINT_URL
for an S3-compatible server). Credentials never pass through here, and a location that carries them
(`s3://KEY:SECRET@bucket`, `?secret_key=`) is refused, since locations are written into files and logs.

Only small files go through these helpers (markers, publish state, publish.json, trials.csv, plots).
A model folder needs a file system: merged models are written to a local folder, never to a URI.
Local paths keep plain file semantics (an atomic replace for `write_text`); a write to object storage
replaces the object whole (one PUT), which is atomic there too.
"""

import os
import re
import shutil
import threading
import uuid
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
        path = _local(location)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = _fs(location)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location, text: str) -> None:
    write_bytes(location, text.encode())


def is_file(location) -> bool:
    if not is_remote(location):
        return _local(location).is_file()
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.File


def mtime(location) -> float | None:
    """When the file was last written (seconds since the epoch), or None when it is not there."""
    if not is_remote(location):
        try:
            return _local(location).stat().st_mtime
        except OSError:
            return None
    fs, path = _fs(location)
    info = fs.get_file_info(path)
    return info.mtime.timestamp() if info.mtime is not None and info.is_file else None


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
    """Copy a local file to `location` (a plain copy when both are local); returns `location`."""
    if not is_remote(location):
        if _local(local_file).resolve() != _local(location).resolve():
            _local(location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local_file, _local(location))
        return str(location)
    write_bytes(location, Path(local_file).read_bytes())
    return str(location)


PROBE_TIMEOUT_S = 30  # a storage that has not answered by then is not one to run a sweep on


def writable_problem(location: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why `location` (a URI) cannot hold experiments, in one line, or None: a probe object is written there, read
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
