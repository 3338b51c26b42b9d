"""A full or failing storage is an outcome, not a traceback: after the sweep met errors, decide whether the storage is
what failed (a probe write and its free space, with the errors' errno), record the marker `failed` with the reason in
the room the reserve file leaves, and re-upload whole what Tune's last upload to the full storage cut short, so a
`--resume` after space is freed continues the trials from their checkpoints. run.py prints the one line and exits 1.

While the sweep runs, StorageWatch reads each failed trial attempt's error on the driver, and the first one the storage
caused (full, over quota, read-only) stops the whole sweep, as Ctrl-C would (SIGUSR1, which Tune takes for the same
graceful stop): restarting trials into a full disk would spend every trial's retries, and GPU time, on the same error.
"""

import errno
import os
import signal
from pathlib import Path

from ray import tune

from orchestrator.experiment import FAILED, MARKER, Experiment, write_marker
from publishing import storage as store
from trainables.compat import MissingInternal
from trainables.compat.ray_internals import ray_train_session_dir
from trainables.errors import one_line


class StorageFailed(Exception):
    """The sweep ended because its storage is full or cannot be written; `failure` says which, in one line."""

    def __init__(self, failure: store.StorageFailure):
        super().__init__(failure.describe())
        self.failure = failure


def storage_failure_of(experiment: Experiment, errors: list) -> store.StorageFailure | None:
    """After a sweep met `errors` (exceptions, or their text): is its storage what failed? Probes it (a small write)
    and measures its space; when it failed, releases the reserve and, in the room that leaves, records the marker
    `failed` with the reason and re-uploads whole what Tune's last upload left cut short. None when the storage is
    fine (the errors are the sweep's own)."""
    space = store.disk_space(experiment.path)
    problem = store.writable_problem(experiment.path)
    failure = store.storage_failure(experiment.storage, errors, problem, space)
    if failure is None or (problem is not None and not experiment.is_local):  # object storage that does not answer
        return failure
    try:
        write_marker(experiment, FAILED, reason=failure.describe())
    except OSError as e:
        print(f"storage: the marker {MARKER} still says running ({one_line(e)}); --resume continues it all the same",
              flush=True)
    try:
        staged = tune_staging_dir(experiment.name)
    except MissingInternal as e:
        print(f"storage: Tune's staging folder is not where this Ray keeps it ({one_line(e)}); what its last upload "
              "cut short stays so, and --resume continues from its last whole state", flush=True)
        return failure
    if staged is not None:
        left = store.sync_whole(staged, experiment.path, _tune_file)
        if left:
            print(f"storage: {len(left)} of Tune's files could not be written whole (first: {left[0]}); --resume "
                  "continues from its last whole state", flush=True)
    return failure


def raise_if_storage_failed(experiment: Experiment, errors: list) -> None:
    """StorageFailed when the storage is what failed (see storage_failure_of)."""
    if failure := storage_failure_of(experiment, errors):
        raise StorageFailed(failure)


def _tune_file(relative: str) -> bool:
    """A file Tune stages and uploads: its state (top level) or a trial's logs (in the trial's folder); not ours."""
    from orchestrator.state_seal import SEAL_FILE, is_tune_state

    return "/" in relative or is_tune_state(relative) or relative == SEAL_FILE


def tune_staging_dir(name: str) -> Path | None:
    """Where Ray Tune (2.x) stages experiment `name`'s files on this driver before uploading them (its state, each
    trial's logs): `<Ray session>/artifacts/<time>/<name>/driver_artifacts`; the newest, or None (Ray not running here).
    Where Ray keeps it is a private part of Ray Train (trainables.compat.ray_internals.ray_train_session_dir):
    MissingInternal when a Ray version moved it."""
    import glob

    import ray

    if not ray.is_initialized():
        return None
    staged = [Path(p) for p in glob.glob(str(Path(ray_train_session_dir(), "*", glob.escape(name),
                                                   "driver_artifacts")))]
    return max(staged, key=lambda p: p.stat().st_mtime, default=None)



STOPPING_ERRNOS = store.FULL_ERRNOS | {errno.EROFS}  # an I/O error (EIO) may be the trial's own: it is not enough
# sweep id -> the first failed attempt's error that the storage caused (StorageWatch writes it, run_sweep reads it); a
# dict of the driver's process, like the time budget's clocks
STORAGE_ERRORS: dict[str, str] = {}


def storage_error_line(error_text: str) -> str | None:
    """The line of a failed attempt's error text that names a storage errno that stops the sweep, or None."""
    if store.storage_errno(error_text) not in STOPPING_ERRNOS:
        return None
    lines = [line.strip() for line in error_text.splitlines() if store.storage_errno(line) in STOPPING_ERRNOS]
    return one_line(lines[-1] if lines else error_text)


class StorageWatch(tune.Callback):
    """On the driver: a trial attempt that failed because the storage is full or read-only stops the sweep."""

    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id

    def _failed(self, trial) -> None:
        path = trial.error_file  # Tune writes the attempt's error.txt on the driver before it calls back
        try:
            text = Path(path).read_text(errors="replace") if path else ""
        except OSError:
            return
        # Tune appends each attempt's error ("Failure # N (occurred at ...)"): only the newest is this attempt's
        if self.sweep_id not in STORAGE_ERRORS and (line := storage_error_line(text.rsplit("Failure # ", 1)[-1])):
            STORAGE_ERRORS[self.sweep_id] = line
            print(f"storage: trial {trial.trial_id} could not write ({line}); stopping the sweep", flush=True)
            # Tune's own graceful stop (as Ctrl-C): it saves its state with every unfinished trial resumable, where a
            # Stopper would mark them terminated and end the search for good
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._failed(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._failed(trial)
