"""A handled fault reads as handled: Ray Tune logs every failed trial attempt with its whole traceback (a killed
worker node printed about 96 lines of `ActorDiedError` before its trial resumed). The driver condenses that record
to one line saying what happened and what Tune does next; the full text stays in the trial's `error.txt` and in
Ray's logs. Only that one record is touched: every other log line passes as it is.
"""

import logging
import re

from trainables.errors import one_line

TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"
_FAILED = re.compile(r"^Trial task failed for trial (\S+)")
_TRIAL_ID = re.compile(r"([0-9a-f]{8}(?:_\d+)?)$")  # Tune's trial id, at the end of a trial's name


def condensed(trial_name: str, error: BaseException | None) -> str:
    """`trial 254c6de9: ActorDiedError: The actor died ...; Tune restarts it from its last checkpoint while
    --max_failures allows (its error.txt has the whole traceback)`."""
    found = _TRIAL_ID.search(trial_name)
    what = one_line(error, 160) if error is not None else "failed"
    return (f"trial {found.group(1) if found else trial_name}: {what}; Tune restarts it from its last checkpoint "
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
    logging.getLogger(TUNE_CONTROLLER_LOGGER).addFilter(_CONDENSE)
