"""One way to turn a failure into one line of text, for every place a failure becomes a line (a log, an error
message, the summary). It never raises: `str(e).splitlines()[0]` raised IndexError on an empty message
(`str(TimeoutError()) == ""`, as many network errors are), and inside a catch-all that killed the publishing thread.
"""

DEFAULT_LIMIT = 200


def one_line(error: BaseException | str, limit: int = DEFAULT_LIMIT) -> str:
    """`TypeName: first non-empty line of the message`, cut to `limit` characters; the type alone when the message
    is empty or cannot be read. A string is taken as the message itself."""
    if isinstance(error, str):
        name, message = "", error
    else:
        name = type(error).__name__
        try:
            message = str(error)
        except Exception:  # noqa: BLE001 - an exception whose __str__ raises still gets a line
            message = ""
    first = next((line.strip() for line in message.splitlines() if line.strip()), "")
    text = f"{name}: {first}" if name and first else (first or name or "unknown error")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:max(limit - 3, 1)] + "..."
