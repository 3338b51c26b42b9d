"""`ray job stop` is Ctrl-C: a driver told to stop by SIGTERM stops as it does on SIGINT.

A sweep or mining run on a cluster is a Ray job, and `ray job stop <id>` is how its user stops it. Ray's job
supervisor sends the driver SIGTERM (SIGINT only where RAY_JOB_STOP_SIGNAL=SIGINT is set, and a job's driver has
SIGINT blocked otherwise), then SIGKILL once RAY_JOB_STOP_WAIT_TIME_S (3 s by default) have passed. Python's default
for SIGTERM ends the process on the spot: no last snapshot of Tune's state, no `interrupted` marker, no resume
command in the job's log. So SIGTERM is handed to whichever SIGINT handler is in place at that moment: Tune's
during a sweep (it saves the experiment and ends the sweep as interrupted), orchestrator.mine's between rounds,
Python's KeyboardInterrupt otherwise. A second SIGTERM, like a second Ctrl-C, stops at once.
"""

import signal


def stop_means_ctrl_c() -> None:
    """From now on, SIGTERM does what SIGINT would do. (Set once Ray is up: ray.init sets its own, which ends the
    process at once.)"""
    signal.signal(signal.SIGTERM, as_ctrl_c)


def as_ctrl_c(signum, frame) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job of a non-interactive shell) or not Python's: stop as Ctrl-C stops
        raise KeyboardInterrupt
