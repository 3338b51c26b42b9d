"""--time_budget's durations as text (pure; free of Ray, so that the config check stays fast)."""

import re

FLAG = "--time_budget"
_NUMBER = r"\d+(?:\.\d+)?"
_PARTS = re.compile(rf"(?:({_NUMBER})d)?(?:({_NUMBER})h)?(?:({_NUMBER})m)?(?:({_NUMBER})s)?")
_UNITS = (86400, 3600, 60, 1)
MIN_SECONDS = 10          # below this no trial can load its model and report once: the budget is a typo
MAX_SECONDS = 366 * 86400


def parse_duration(text: str) -> float:
    """`45s`, `90m`, `6h`, `1h30m`, `2d` or plain seconds (`5400`) -> seconds; ValueError in one line otherwise."""
    spec = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(_NUMBER, spec):
        seconds = float(spec)
    else:
        parts = _PARTS.fullmatch(spec)
        if not spec or parts is None or not any(parts.groups()):
            raise ValueError(f"{FLAG} must be a duration such as 45s, 90m, 6h or 1h30m (a plain number is seconds), "
                             f"got {text!r}")
        seconds = sum(float(value) * unit for value, unit in zip(parts.groups(), _UNITS) if value)
    if not seconds > 0:
        raise ValueError(f"{FLAG} must be more than 0, got {text!r}; leave it out for no time limit")
    if not seconds < MAX_SECONDS:  # 1e999 parses to infinity
        raise ValueError(f"{FLAG} {text!r} is longer than a year; leave it out for no time limit")
    if seconds < MIN_SECONDS:
        raise ValueError(f"{FLAG} {text!r} is shorter than {MIN_SECONDS} s, too short for any trial to reach an "
                         f"evaluation; give at least {MIN_SECONDS}s (or leave it out)")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as a renter reads them: 45s, 2m, 1m58s, 1h30m, 6h."""
    if 0 < seconds < 1:
        return f"{seconds:.1f}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value)
    return text or "0s"
