"""Trial functions for sweeps under test: lora_trainable with a fault injected (a crash after the first checkpoint,
a trial that always raises, a slow clean-up). A sweep's workers cannot import the tests: a test registers this module
with `ray.cloudpickle.register_pickle_by_value` before it passes one of these to `run_sweep(trial_function=...)`."""


def crash_once_after_first_checkpoint(config, settings, data):
    """lora_trainable, except that a first attempt dies right after its first checkpoint is reported."""
    from ray import tune

    from trainables.lora_trial import lora_trainable

    report = tune.report
    if tune.get_checkpoint() is None:
        def report_then_crash(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            raise RuntimeError("injected failure after the first checkpoint")
        tune.report = report_then_crash
    try:
        lora_trainable(config, settings, data)
    finally:
        tune.report = report  # the worker is reused by the next trial


def fail_at_one_learning_rate(config, settings, data):
    """lora_trainable, except that the trial at learning rate 1e-4 always raises."""
    from trainables.lora_trial import lora_trainable

    if config["learning_rate"] == 1e-4:
        raise RuntimeError("injected: this trial always fails")
    lora_trainable(config, settings, data)


def slow_to_clean_up(config, settings, data):
    """lora_trainable, except that a trial takes 4 s to clean up after it ends or is stopped: on a busy machine,
    freeing a real model takes that long, and Ray Tune's reuse of the worker waited only 2 s for it."""
    import time

    from trainables.lora_trial import lora_trainable

    try:
        lora_trainable(config, settings, data)
    finally:
        time.sleep(4)  # the slow clean-up under test, not a wait for anything
