"""The experiment folder: where it is, whether it can be written, and which one `--resume` continues.

Every sweep writes `lora_sweep.json` into its folder (its status and the command that started it).
A bare `--resume` continues only a folder with that marker whose sweep did not end, never just the
newest folder in storage: resuming unpickles Tune's state (`tuner.pkl`), so it must be ours.
Checked before Ray starts, so a wrong path or name costs one line, not a sweep.
"""

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ConfigError, SweepConfig

MARKER = "lora_sweep.json"
RUNNING, FINISHED, INTERRUPTED = "running", "finished", "interrupted"


@dataclass(frozen=True)
class Experiment:
    storage: str      # --storage_path as given (a local folder, expanded, or a URI)
    name: str
    resume: bool

    @property
    def is_local(self) -> bool:
        return not is_remote(self.storage)

    @property
    def path(self) -> str:
        return str(Path(self.storage) / self.name) if self.is_local else f"{self.storage.rstrip('/')}/{self.name}"


def is_remote(storage_path: str) -> bool:
    return "://" in storage_path


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


def read_marker(folder: Path) -> dict | None:
    """The experiment's marker, or None when it has none (not ours) or it cannot be read."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("status") in (RUNNING, FINISHED, INTERRUPTED) else None


def write_marker(experiment: Experiment, status: str, command: list[str] | None = None) -> None:
    """Record the sweep's status in its folder (local storage only; a URI's folder is Tune's alone)."""
    if not experiment.is_local:
        return
    folder = Path(experiment.path)
    folder.mkdir(parents=True, exist_ok=True)
    marker = read_marker(folder) or {"created_at": time.time()}
    marker.update(status=status, updated_at=time.time(), **({"command": command} if command is not None else {}))
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, indent=2))
    os.replace(tmp, folder / MARKER)


def has_tune_state(folder: Path) -> bool:
    """Tune's experiment state is there, so `Tuner.restore` can continue it."""
    return any(folder.glob("experiment_state*.json")) and (folder / "tuner.pkl").is_file()


def resumable(storage: Path) -> list[Path]:
    """Our experiments in storage that did not end (the driver stopped or was interrupted), oldest first."""
    found = [p for p in storage.iterdir() if p.is_dir() and has_tune_state(p)
             and (read_marker(p) or {}).get("status") in (RUNNING, INTERRUPTED)]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def choose_experiment(config: SweepConfig) -> Experiment:
    """The folder this sweep writes (or, with --resume, continues); every failure is one line."""
    if is_remote(config.run.storage_path):
        if config.run.resume and not config.run.experiment_name:
            raise ConfigError(f"--resume with --storage_path {config.run.storage_path} needs --experiment_name "
                              "(the folder to continue)")
        return Experiment(config.run.storage_path, config.run.experiment_name or new_experiment_name(),
                          config.run.resume)
    storage = check_local_storage(config.run.storage_path)
    if not config.run.resume:
        return Experiment(str(storage), config.run.experiment_name or new_experiment_name(), False)
    if config.run.experiment_name:
        folder = storage / config.run.experiment_name
        if not has_tune_state(folder):
            raise ConfigError(f"--resume: no experiment {config.run.experiment_name!r} to continue in {storage}; "
                              "check --experiment_name and --storage_path")
        return Experiment(str(storage), config.run.experiment_name, True)
    candidates = resumable(storage)
    if not candidates:
        raise ConfigError(f"--resume found no unfinished sweep of this miner in {storage}; "
                          "pass --experiment_name (and --storage_path) of the one to continue")
    return Experiment(str(storage), candidates[-1].name, True)
