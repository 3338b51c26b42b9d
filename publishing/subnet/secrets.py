"""Secrets stay out of configs, results, logs, W&B and the dashboard: they travel wrapped."""

import os
from pathlib import Path

from dotenv import dotenv_values

HF_TOKEN_VARIABLES = ("HF_ACCESS_TOKEN", "HF_TOKEN")


class Secret:
    """A string that never prints: repr, str and format show a mask; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __format__(self, spec) -> str:
        return repr(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_env_file(env_file: str | Path = ".env") -> dict[str, str]:
    path = Path(env_file)
    return {k: v for k, v in dotenv_values(path).items() if v} if path.is_file() else {}


def load_hf_token(env_file: str | Path = ".env") -> Secret | None:
    """HF_ACCESS_TOKEN (the original miner's name) or HF_TOKEN, from the environment, then from .env."""
    file_values = read_env_file(env_file)
    for name in HF_TOKEN_VARIABLES:
        value = os.environ.get(name) or file_values.get(name)
        if value:
            return Secret(value.strip())
    return None
