import logging

from orchestrator.fault_lines import TUNE_CONTROLLER_LOGGER, CondenseTrialFailures, condensed


def record(message: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(TUNE_CONTROLLER_LOGGER, logging.ERROR, __file__, 1, message, (), exc_info)


def test_a_failed_attempt_is_one_line_naming_the_trial_and_what_happens_next():
    error = RuntimeError("The actor died unexpectedly before finishing this task.\n\tclass_name: ImplicitFunc\n...")
    line = record("Trial task failed for trial lora_trainable_254c6de9", error)
    assert CondenseTrialFailures().filter(line)
    text = logging.Formatter("%(levelname)s %(message)s").format(line)
    assert text == ("WARNING " + condensed("lora_trainable_254c6de9", error))
    assert "\n" not in text and text.startswith("WARNING trial 254c6de9: RuntimeError: The actor died")


def test_other_records_pass_untouched():
    other = record("Trial %s: Error stopping trial.", ValueError("x"))
    assert CondenseTrialFailures().filter(other) and other.exc_info is not None and other.levelno == logging.ERROR
