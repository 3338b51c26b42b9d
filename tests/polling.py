"""Waiting for a condition with a deadline and a message that names it, instead of sleeping a fixed time."""

import subprocess
import time


def wait_for(what: str, probe, timeout: float, interval: float = 1.0, process: subprocess.Popen | None = None):
    """probe()'s first truthy value, asked every `interval` s for up to `timeout` s. probe may raise while the thing is
    not up yet (the last error is in the failure message). With `process`: fail as soon as that process has ended,
    since what it was to bring about will not come (its output, where it is piped, is in the message)."""
    deadline, last_error = time.monotonic() + timeout, None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - not up yet
            last_error = e
        if process is not None and process.poll() is not None:
            output = process.stdout.read()[-3000:] if process.stdout else ""
            raise AssertionError(f"the process ended (code {process.returncode}) before {what}:\n{output}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error})")
        time.sleep(interval)
