"""The experiment folder: where it is, whether it can be written, and which one `--resume` continues.

Every sweep writes `lora_sweep.json` into its folder (its status and the command that started it).
A bare `--resume` continues only a folder with that marker whose sweep did not end, never just the
newest folder in storage; and resuming unpickles Tune's state (`tuner.pkl`, ...), so every such file must carry
this machine's seal (orchestrator.state_seal) before anything is loaded.
Checked before Ray starts, so a wrong path or name costs one line, not a sweep.

The folder may be in object storage (`s3://bucket/sweeps`, `gs://...`): the marker, the checks and the
search for an unfinished sweep go through `publishing.storage` (pyarrow's file systems, as Ray Tune's own
storage does). What needs a file system (the merged best model) and local copies of what is uploaded
(trials.csv, plots) are kept in `Experiment.local_dir` on the driver's machine.
"""

import json
import os
import pickletools
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.state_seal import SESSION_STATE_PREFIXES, check_sealed
from publishing import storage as store
from publishing.coordinator import PUBLISH_FILE
from trainables.trial_contract import EVAL_LOSS

MARKER = "lora_sweep.json"
# FAILED: the storage filled or failed (the marker's `reason` says how); like INTERRUPTED, --resume continues it
RUNNING, FINISHED, INTERRUPTED, FAILED = "running", "finished", "interrupted", "failed"
# While a sweep runs, a local experiment folder holds this much in a reserve file; when the disk fills, releasing it
# leaves room to record the end whole: the marker, and Tune's last state (see orchestrator.storage_failure)
RESERVE, RESERVE_BYTES = ".lora_sweep.reserve", 4 * 2**20
# With --storage_path in object storage: where this machine keeps the experiment's local files (<dir>/<name>)
LOCAL_DIR_ENV = "LORA_SWEEP_LOCAL_DIR"
DEFAULT_LOCAL_DIR = "~/ray_results"


@dataclass(frozen=True)
class Experiment:
    storage: str      # --storage_path as given (a local folder, expanded, or a URI)
    name: str
    resume: bool
    finished: bool = False  # --resume of a sweep that had finished: nothing to train, its results to report

    @property
    def is_local(self) -> bool:
        return not store.is_remote(self.storage)

    @property
    def path(self) -> str:
        return str(Path(self.storage) / self.name) if self.is_local else store.join(self.storage, self.name)

    @property
    def local_dir(self) -> str:
        """A folder on this machine for what needs a file system (best_model/) and for local copies of files kept in
        the experiment (trials.csv, plots): the experiment folder itself, or, when that is in object storage,
        $LORA_SWEEP_LOCAL_DIR (default ~/ray_results)/<name>."""
        if self.is_local:
            return self.path
        return str(Path(os.environ.get(LOCAL_DIR_ENV) or DEFAULT_LOCAL_DIR).expanduser().resolve() / self.name)

    def keep(self, local_file: str | Path) -> str:
        """Put a file written under `local_dir` into the experiment folder too; where it is kept there."""
        if self.is_local:
            return str(local_file)
        relative = Path(local_file).resolve().relative_to(Path(self.local_dir)).as_posix()
        return store.upload(local_file, store.join(self.path, *relative.split("/")))

    def trial_results_here(self) -> str:
        """A folder on this machine with each trial's result.json and params.json (for the plots): the experiment
        folder itself, or a copy of those files from object storage in local_dir (checkpoints are not copied)."""
        if self.is_local:
            return self.path
        for relative in store.files(self.path, recursive=True):
            parts = relative.split("/")
            if len(parts) == 2 and parts[1] in ("result.json", "params.json"):
                store.write_bytes(Path(self.local_dir, *parts), store.read_bytes(store.join(self.path, *parts)))
        return self.local_dir


def new_experiment_name() -> str:
    return time.strftime("lora-sweep-%Y%m%d-%H%M%S")


def check_local_storage(storage_path: str) -> Path:
    """--storage_path must be a folder this process can create and write (a probe file proves it)."""
    storage = Path(storage_path).expanduser()
    if storage.exists() and not storage.is_dir():
        raise ConfigError(f"--storage_path {storage_path} is a file, not a folder; pass a folder for experiments")
    try:
        storage.mkdir(parents=True, exist_ok=True)
        probe = storage / f".lora-sweep-write-probe-{uuid.uuid4().hex}"
        probe.write_text("probe")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--storage_path {storage_path} cannot be written ({e.strerror or type(e).__name__}); "
                          "pass a folder you can write") from None
    return storage.resolve()


def read_marker(folder: Path | str) -> dict | None:
    """The experiment's marker, or None when it has none (not ours) or it cannot be read."""
    try:
        marker = json.loads(store.read_text(store.join(folder, MARKER)))
    except (OSError, ValueError):  # OSError: FileNotFoundError, and object storage that cannot be read
        return None
    statuses = (RUNNING, FINISHED, INTERRUPTED, FAILED)
    return marker if isinstance(marker, dict) and marker.get("status") in statuses else None


def write_marker(experiment: Experiment, status: str, command: list[str] | None = None,
                 reason: str | None = None) -> None:
    """Record the sweep's status in its folder (beside Tune's files, local or in object storage), whole or not at all
    (publishing.storage writes a temporary file, then renames it). A running sweep's local folder also keeps
    RESERVE_BYTES in a reserve file, released when it ends, or to make room when its disk is full."""
    if status != RUNNING:
        release_reserve(experiment)
    marker = read_marker(experiment.path) or {"created_at": time.time()}
    marker.pop("reason", None)
    marker.update(status=status, updated_at=time.time(), **({"command": command} if command is not None else {}),
                  **({"reason": reason} if reason else {}))
    store.write_text(store.join(experiment.path, MARKER), json.dumps(marker, indent=2))
    if status == RUNNING and experiment.is_local and not Path(experiment.path, RESERVE).is_file():
        # random bytes: a file system that compresses or deduplicates still sets aside the whole size
        store.write_bytes(store.join(experiment.path, RESERVE), os.urandom(RESERVE_BYTES))


def release_reserve(experiment: Experiment) -> None:
    if experiment.is_local:
        Path(experiment.path, RESERVE).unlink(missing_ok=True)


def has_tune_state(folder: Path | str) -> bool:
    """Tune's experiment state is there, so `Tuner.restore` can continue it."""
    names = store.files(folder)
    return any(n.startswith("experiment_state") and n.endswith(".json") for n in names) and "tuner.pkl" in names


def resumable(storage_path: Path | str) -> list[str]:
    """Our experiments in storage that did not end (the driver stopped or was interrupted), oldest first: by the
    folder's time on a file system, by the marker's last write in object storage (which has no folders)."""
    found = []
    for name in store.folders(storage_path):
        folder = store.join(storage_path, name)
        if (read_marker(folder) or {}).get("status") in (RUNNING, INTERRUPTED, FAILED) and has_tune_state(folder):
            when = (Path(folder).stat().st_mtime if not store.is_remote(folder)
                    else store.mtime(store.join(folder, MARKER)) or 0.0)
            found.append((when, name))
    return [name for _, name in sorted(found)]


def check_remote_storage(storage_path: str) -> None:
    """A URI for --storage_path: no credentials in it, and writable with the environment's credentials."""
    if where := store.credentials_in(storage_path):
        raise ConfigError(f"--storage_path holds {where}; it would be written into the experiment's files and logs: "
                          "give credentials the usual way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                          "~/.aws, or the machine's role)")
    if problem := store.writable_problem(storage_path):
        raise ConfigError(f"--storage_path {storage_path} cannot be written ({problem}); check the bucket and the "
                          "credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, or the "
                          "machine's role; AWS_ENDPOINT_URL for an S3-compatible server)")


def choose_experiment(config: SweepConfig) -> Experiment:
    """The folder this sweep writes (or, with --resume, continues); every failure is one line."""
    if store.is_remote(config.run.storage_path):
        check_remote_storage(config.run.storage_path)
        where = config.run.storage_path
    else:
        where = str(check_local_storage(config.run.storage_path))
    if not config.run.resume:
        name = config.run.experiment_name or new_experiment_name()
        if marker := read_marker(store.join(where, name)):
            # a second sweep in the same folder would overwrite its best_model/, publish.json and trials.csv
            done = marker["status"] == FINISHED
            raise ConfigError(f"--experiment_name {name!r} is a sweep of this miner that "
                              f"{'finished' if done else 'did not finish'} in {where}; give a new --experiment_name, "
                              f"or add --resume to {'see its result' if done else 'continue it'}")
        return Experiment(where, name, False)
    if config.run.experiment_name:
        folder = store.join(where, config.run.experiment_name)
        if (read_marker(folder) or {}).get("status") == FINISHED:
            return Experiment(where, config.run.experiment_name, True, finished=True)
        if not has_tune_state(folder):
            raise ConfigError(f"--resume: no experiment {config.run.experiment_name!r} to continue in {where}; "
                              "check --experiment_name and --storage_path")
        set_aside_cut_short_state(folder)  # a disk that filled while Tune saved: its last whole state, or one line
        check_sealed(folder)  # resuming unpickles Tune's state: only what this machine's sweeps sealed
        return Experiment(where, config.run.experiment_name, True)
    candidates = resumable(where)
    if not candidates:
        raise ConfigError(f"--resume found no unfinished sweep of this miner in {where}; "
                          "pass --experiment_name (and --storage_path) of the one to continue")
    set_aside_cut_short_state(store.join(where, candidates[-1]))
    check_sealed(store.join(where, candidates[-1]))
    return Experiment(where, candidates[-1], True)


def finished_report(experiment: Experiment) -> str:
    """What a finished sweep left, for a --resume of it: nothing is trained again."""
    lines = [f"experiment {experiment.name} finished already; nothing to resume. Its results:"]
    record = None
    try:
        record = json.loads(store.read_text(store.join(experiment.path, PUBLISH_FILE)))
    except (OSError, ValueError):
        lines.append("  publish.json:  missing or unreadable")
    if isinstance(record, dict):
        loss = record.get(EVAL_LOSS)
        lines += [f"  eval loss:     {loss:.4f}" if isinstance(loss, float) else "  eval loss:     unknown",
                  f"  merged model:  {record.get('model_dir')}", f"  model id:      {record.get('model_id')}"]
    lines += [f"  trials.csv:    {store.join(experiment.path, 'trials.csv')}", f"  experiment:    {experiment.path}"]
    return "\n".join(lines)


# --- Tune's state that a full disk cut short: set aside before a --resume, so Tune continues from a whole one -------

# Tune names each run's state files for its session: experiment_state-2024-01-31_12-00-00.json
_TUNE_SESSION = re.compile(f"^(?:{'|'.join(map(re.escape, SESSION_STATE_PREFIXES))})"
                           r"-(\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})\.(?:json|pkl)$")
SET_ASIDE_DIR = "cut_short_state"  # where a --resume moves Tune state files that a full disk cut short


def whole_state(name: str, data: bytes) -> bool:
    """A Tune state file that is whole: experiment_state-*.json parses as JSON; the others (pickles, whatever their
    name ends with) run to pickle's STOP. Read without unpickling anything."""
    if not data:
        return False
    if name.startswith("experiment_state"):
        try:
            json.loads(data)
        except ValueError:
            return False
        return True
    try:
        for _ in pickletools.genops(data):
            pass
    except Exception:  # noqa: BLE001 - pickletools raises ValueError, IndexError, ... on a pickle cut short
        return False
    return True


def set_aside_cut_short_state(folder: str) -> None:
    """Before a --resume: Tune restores from its newest state files, and a disk that filled while Tune uploaded them
    left them cut short (Tune then starts the sweep over). Each session's files are moved into cut_short_state/ while
    any of them is cut short and an earlier session's are whole; with none whole, one line."""
    def cut_short(name: str) -> ConfigError:
        return ConfigError(f"--resume: Tune's state in {folder} was cut short ({name}: the storage filled or failed "
                           "while it was written) and no earlier state is whole, so its trials cannot be continued; "
                           "start a new sweep with a new --experiment_name")

    # (tuner.pkl is written once, when the sweep starts, after the storage was probed: not checked here)
    names = [n for n in store.files(folder) if _TUNE_SESSION.match(n)]
    sessions = sorted({_TUNE_SESSION.match(n).group(1) for n in names})
    while sessions:
        newest = [n for n in names if _TUNE_SESSION.match(n).group(1) == sessions[-1]]
        cut = [n for n in newest if not whole_state(n, store.read_bytes(store.join(folder, n)))]
        if not cut:
            return
        sessions.pop()
        if not any(n.startswith("experiment_state") and _TUNE_SESSION.match(n).group(1) in sessions for n in names):
            raise cut_short(cut[0])
        if not store.is_remote(folder):
            Path(folder, SET_ASIDE_DIR).mkdir(exist_ok=True)
        for n in newest:
            store.move(store.join(folder, n), store.join(folder, SET_ASIDE_DIR, n))
        print(f"resume: Tune's state in {folder} was cut short ({cut[0]}); moved into {SET_ASIDE_DIR}/, continuing "
              f"from its earlier state of {sessions[-1]}")
