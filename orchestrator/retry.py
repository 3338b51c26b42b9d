"""Chain and Hub reads that an outage must not end: retried with backoff, each failure one line.

A miner runs for weeks; a subtensor node restarting or the Hub answering 503 for a minute is weather, not a reason to
stop. What is not weather (a model that breaks the competition's limits, a uid with no commitment) is raised at once.
"""

import time
from collections.abc import Callable
from typing import TypeVar

from trainables.errors import one_line

T = TypeVar("T")
ATTEMPTS = 5
FIRST_WAIT_S = 2.0   # then 4, 8, 16 s: a minute in all before the round goes on without what was read


class Unreachable(RuntimeError):
    """Every attempt failed with a transient error; the message is the one line that says so."""


def is_transient(error: BaseException) -> bool:
    """A network or server failure (worth retrying), looking through the causes a wrapper keeps."""
    from publishing.subnet.chain import ChainError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(status, int) and (status >= 500 or status == 429):
            return True
        if isinstance(error, ChainError) and "rate limit" not in str(error):
            return True  # the chain client's errors are its connection's (a refusal is named, and not retried)
        error = error.__cause__ or error.__context__
    return False


def retried(what: str, read: Callable[[], T], *, attempts: int = ATTEMPTS, first_wait_s: float = FIRST_WAIT_S,
            sleep: Callable[[float], None] = time.sleep, say: Callable[[str], None] = print) -> T:
    """read(), again after 2, 4, 8... seconds while it fails with a transient error, each failure one line; raises
    Unreachable after `attempts`. Any other error is raised at once, as it is."""
    wait = first_wait_s
    for attempt in range(1, attempts + 1):
        try:
            return read()
        except Exception as e:  # noqa: BLE001 - sorted by is_transient
            if not is_transient(e):
                raise
            reason = one_line(e, 160)  # the type alone when the message is empty
            if attempt == attempts:
                say(f"retry: {what} failed {attempts} times ({reason}); going on without it")
                raise Unreachable(f"{what} failed {attempts} times ({reason})") from e
            say(f"retry: {what} failed ({reason}); attempt {attempt + 1} of {attempts} in {wait:g} s")
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")
