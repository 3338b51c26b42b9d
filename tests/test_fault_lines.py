import logging

from orchestrator.fault_lines import PROGRESS, TUNE_CONTROLLER_LOGGER, CondenseTrialFailures, TrialProgress, condensed


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


def test_the_line_says_where_the_trial_failed_and_where_it_resumes():
    error = RuntimeError("The actor died unexpectedly before finishing this task.")
    PROGRESS["0badc0de"] = TrialProgress(step=60, checkpoint_step=50)
    PROGRESS["0badc0df"] = TrialProgress(step=7)
    assert condensed("lora_trainable_0badc0de", error).startswith(
        "trial 0badc0de failed at step 60 (RuntimeError: The actor died unexpectedly before finishing this task.); "
        "Tune resumes it from its checkpoint at step 50 while --max_failures allows")
    assert "failed at step 7 " in condensed("lora_trainable_0badc0df", error)
    assert "restarts it from the start (no checkpoint yet)" in condensed("lora_trainable_0badc0df", error)
