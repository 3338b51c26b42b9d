import pytest

from trainables.errors import one_line


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


@pytest.mark.parametrize("error, expected", [
    (TimeoutError(), "TimeoutError"),
    (ConnectionError(), "ConnectionError"),
    (Unprintable(), "Unprintable"),
    (ValueError("\n\n  the real line  \nmore advice\n"), "ValueError: the real line"),
    (KeyError("end"), "KeyError: 'end'"),
    ("  just text\nsecond", "just text"),
    ("", "unknown error"),
])
def test_one_line_never_raises_and_says_what_failed(error, expected):
    assert one_line(error) == expected


def test_one_line_is_cut_to_its_limit():
    line = one_line(RuntimeError("x" * 500), limit=50)
    assert len(line) == 50 and line.endswith("...") and "\n" not in line
