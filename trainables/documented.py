"""A documented setting: a dataclass field that carries its help text (and, where it differs from the field's
name, the flag users type). Every config group uses it, so one parser can be built from the groups' fields."""

from dataclasses import field


def setting(default, help: str, flag: str | None = None):
    return field(default=default, metadata={"help": help, "flag": flag})
