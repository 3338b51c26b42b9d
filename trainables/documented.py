"""A documented setting: a dataclass field that carries its help text, its allowed values, what its default means
when it is "unset", and (where it differs from the field's name) the flag users type. Every config group uses it,
and `add_flag` turns such a field into a command-line flag, so the sweep's parser and the manual upload's are built
the same way from the same fields, and `--help` shows each flag's allowed values and one true default."""

import argparse
import dataclasses
import enum
import types
import typing
from dataclasses import field


def setting(default, help: str, flag: str | None = None,
            choices: tuple[str, ...] | type[enum.StrEnum] | None = None, unset: str | None = None):
    """`choices`: the only values allowed (checked by `check_choices`, listed by --help), as strings or a StrEnum
    (its values are the choices, and `typed_choices` makes the field hold its member). `unset`: what a default
    of None means, in words ("the competition's sequence length"), shown by --help as the default."""
    kind = choices if isinstance(choices, type) and issubclass(choices, enum.StrEnum) else None
    if kind is not None:
        choices = tuple(member.value for member in kind)
    return field(default=default, metadata={"help": help, "flag": flag, "choices": choices, "unset": unset,
                                            "enum": kind})


def scalar_type(group: type, name: str) -> type:
    """The type a setting's value has: `int | None` -> int. A StrEnum setting's is str: the flag and the YAML value
    are its string."""
    hint = typing.get_type_hints(group)[name]
    if isinstance(hint, types.UnionType):
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return str if isinstance(hint, type) and issubclass(hint, enum.StrEnum) else hint


def typed_choices(group) -> None:
    """For a frozen group's `__post_init__`: each setting whose choices are a StrEnum holds its member (a valid
    string becomes the member; any other value stays as given, for `check_choices` to name the flag)."""
    for f in dataclasses.fields(group):
        kind, value = f.metadata.get("enum"), getattr(group, f.name)
        if kind is not None and value in f.metadata["choices"]:
            object.__setattr__(group, f.name, kind(value))


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def check_choices(group) -> None:
    """Raise ValueError naming the flag when a setting with `choices` holds another value."""
    for f in dataclasses.fields(group):
        allowed, value = f.metadata.get("choices"), getattr(group, f.name)
        if allowed and value is not None and value not in allowed:
            raise ValueError(f"--{flag_name(f)} must be one of {', '.join(allowed)}, got {value!r}")


def shown_default(f: dataclasses.Field, value=dataclasses.MISSING) -> str:
    """The default --help shows: `value` (a config file's) when given, else the field's; None in words."""
    value = f.default if value is dataclasses.MISSING else value
    if value is None:
        return f.metadata.get("unset") or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_flag(parser, group: type, f: dataclasses.Field, shown=dataclasses.MISSING, command: bool = False,
             **kwargs) -> None:
    """One setting as a flag on `parser` (a parser or an argument group). A boolean setting is --x / --no-x (the
    --no- form turns off what a config file turned on); a `command` (an action such as --list_competitions) has
    no --no- form. The help ends with the one default that applies: the field's own; `shown` overrides it (a config file's value)."""
    kind = scalar_type(group, f.name)
    help = f"{f.metadata['help']} (default: {shown_default(f, shown)})"
    if kind is bool:
        action = "store_true" if command else argparse.BooleanOptionalAction
        parser.add_argument(f"--{flag_name(f)}", dest=f.name, action=action, help=help, **kwargs)
    else:
        choices = f.metadata.get("choices")
        metavar = "{" + ",".join(choices) + "}" if choices else kind.__name__.upper()
        parser.add_argument(f"--{flag_name(f)}", dest=f.name, type=kind, metavar=metavar, help=help, **kwargs)
