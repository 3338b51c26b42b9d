"""A documented setting: a dataclass field that carries its help text (and, where it differs from the field's
name, the flag users type). Every config group uses it, and `add_flag` turns such a field into a command-line
flag, so the sweep's parser and the manual upload's are built the same way from the same fields."""

import argparse
import dataclasses
import types
import typing
from dataclasses import field


def setting(default, help: str, flag: str | None = None):
    return field(default=default, metadata={"help": help, "flag": flag})


def scalar_type(group: type, name: str) -> type:
    """The type a setting's value has: `int | None` -> int."""
    hint = typing.get_type_hints(group)[name]
    if isinstance(hint, types.UnionType):
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or f.name


def add_flag(parser: argparse.ArgumentParser, group: type, f: dataclasses.Field, help: str | None = None,
             **kwargs) -> None:
    """One setting as a flag: a boolean is --x / --no-x, anything else takes a value of its type."""
    kind = scalar_type(group, f.name)
    help = f.metadata["help"] if help is None else help
    if kind is bool:
        parser.add_argument(f"--{flag_name(f)}", dest=f.name, action=argparse.BooleanOptionalAction, help=help,
                            **kwargs)
    else:
        parser.add_argument(f"--{flag_name(f)}", dest=f.name, type=kind, metavar=kind.__name__.upper(), help=help,
                            **kwargs)
