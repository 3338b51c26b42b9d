"""A handled fault reads as handled: Ray Tune logs every failed trial attempt with its whole traceback (a killed
worker node printed about 96 lines of `ActorDiedError` before its trial resumed). The driver condenses that record
to one line saying what happened, at which step, and from which checkpoint's step Tune resumes the trial (kept by the
ProgressKeeper callback); the full text stays in the trial's `error.txt` and in Ray's logs. Only that one record is
touched: every other log line passes as it is.
"""

import logging
import re
from dataclasses import dataclass

from ray import tune

from trainables.compat import ray_internals
from trainables.errors import one_line
from trainables.trial_contract import STEP

TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
_FAILED = re.compile(r"^Trial task failed for trial (\S+)")
_TRIAL_ID = re.compile(r"([0-9a-f]{8}(?:_\d+)?)$")  # Tune's trial id, at the end of a trial's name


@dataclass
class TrialProgress:
    """How far a trial got: its last reported step and the step of its last checkpoint (0: none yet), and whether
    Tune ended it (finished, or stopped by the scheduler or a stopper: Tune's on_trial_complete), which a trial cut
    short by an interruption is not."""
    step: int = 0
    checkpoint_step: int = 0
    ended_by_tune: bool = False


# trial id -> its progress, kept by the driver's ProgressKeeper callback (the log filter has only the trial's name)
PROGRESS: dict[str, TrialProgress] = {}


def condensed(trial_name: str, error: BaseException | None) -> str:
    """`trial 254c6de9 failed at step 60 (ActorDiedError: The actor died ...); Tune resumes it from its checkpoint
    at step 60 while --max_failures allows (its error.txt has the whole traceback)`."""
    found = _TRIAL_ID.search(trial_name)
    trial_id = found.group(1) if found else trial_name
    what = one_line(error, 160) if error is not None else "failed"
    progress = PROGRESS.get(trial_id)
    if progress is None:  # no report seen by this driver (a resumed sweep's trial, or one that failed at once)
        return (f"trial {trial_id}: {what}; Tune restarts it from its last checkpoint "
                f"while --max_failures allows (its error.txt has the whole traceback)")
    resumes = (f"resumes it from its checkpoint at step {progress.checkpoint_step}" if progress.checkpoint_step
               else "restarts it from the start (no checkpoint yet)")
    return (f"trial {trial_id} failed at step {progress.step} ({what}); Tune {resumes} "
            f"while --max_failures allows (its error.txt has the whole traceback)")


class CondenseTrialFailures(logging.Filter):
    """Rewrites Tune's "Trial task failed for trial X" record (with its traceback) into one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        match = _FAILED.match(str(record.msg))
        if match:
            error = record.exc_info[1] if record.exc_info else None
            record.msg, record.args, record.exc_info, record.exc_text = condensed(match.group(1), error), (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_CONDENSE = CondenseTrialFailures()  # one instance: adding it again (a second sweep) changes nothing


def condense_trial_failures() -> None:
    log = ray_internals.ray_logger(TUNE_CONTROLLER_LOGGER, "Tune's failed trial attempts print whole tracebacks "
                                                           "again, not one line")
    if log is not None:
        log.addFilter(_CONDENSE)



class ProgressKeeper(tune.Callback):
    """A Tune callback on the driver that keeps PROGRESS: each result's step, each checkpoint's, and each trial Tune
    ended."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        PROGRESS.setdefault(trial.trial_id, TrialProgress()).step = int(result.get(STEP, 0))

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        progress = PROGRESS.setdefault(trial.trial_id, TrialProgress())
        progress.checkpoint_step = int(trial.last_result.get(STEP, progress.step))  # Tune's result came first

    def on_trial_complete(self, iteration, trials, trial, **info):
        PROGRESS.setdefault(trial.trial_id, TrialProgress()).ended_by_tune = True


def ended_by_tune() -> set[str]:
    """The trials this driver saw Tune end (see TrialProgress)."""
    return {trial_id for trial_id, progress in PROGRESS.items() if progress.ended_by_tune}


class CondenseStorageSyncFailures(logging.Filter):
    """Tune logs a failed upload of its state with a whole traceback (a full disk printed dozens); one line each here.
    The sweep goes on: the next upload retries, and a storage that stays full ends it with one line. Filters the
    loggers of trainables.compat.ray_internals.storage_sync_loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("Last sync command failed"):  # the traceback is in the message itself
            lines = [line for line in message.splitlines() if line.strip() and not line.startswith(" ")]
            what = lines[-1] if len(lines) > 1 else "unknown error"
        elif message.startswith("Saving experiment state to storage") and record.exc_info:
            what = one_line(record.exc_info[1])
        else:
            return True
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"Tune could not upload the experiment's state to storage: {one_line(what)}", (), None, None)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


_CONDENSE_SYNC = CondenseStorageSyncFailures()  # one instance: adding it again (a second sweep) changes nothing


def condense_storage_sync_failures() -> None:
    for log in ray_internals.storage_sync_loggers():
        log.addFilter(_CONDENSE_SYNC)
