"""Command-line flags generated from dataclasses: one field, one flag, its help beside it.

    @dataclass
    class Options:
        short_side: int = arg(None, "scale the short side to this many pixels")

``add_flags(parser, Options)`` adds ``--short-side`` (type from the annotation, the help text
with its default); ``from_flags(Options, args)`` builds the dataclass back from the parsed
namespace. Booleans get ``--flag / --no-flag``, ``list[X]`` takes one or more values. Recipe
configs (``modalmae.train.config``) and the shard builders' options use it alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field


def arg(default, help: str, **kw):  # noqa: A002 - mirrors argparse's name
    """A dataclass field carrying its CLI help text (and optional argparse keywords such as
    ``choices``, ``metavar`` or ``type``; ``flag=False`` keeps a field off the command line)."""
    if isinstance(default, list):  # a fresh list per instance (dataclasses refuse shared ones)
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line flags."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", True)]


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type, *, skip: set[str] = frozenset()) -> list[str]:
    """Add a flag for every field of the dataclass ``cls`` not named in ``skip``; returns the
    names of the fields added."""
    hints = typing.get_type_hints(cls)
    added = []
    for f in flag_fields(cls):
        if f.name in skip:
            continue
        meta = {k: v for k, v in f.metadata.items() if k not in ("help", "flag")}
        help_text = f.metadata.get("help", "")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if default is not None and not meta.get("required"):
            help_text += f" (default: {' '.join(map(str, default)) if isinstance(default, list) else default})"
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        added.append(f.name)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:  # list[X]: one or more values
            meta["nargs"] = "+"
            (kind,) = typing.get_args(kind)
        parser.add_argument(flag, **{"type": kind, **meta}, default=default, help=help_text)  # meta may set its own type
    return added


def from_flags(cls: type, args: argparse.Namespace):
    """An instance of the dataclass ``cls`` from the parsed flags its fields named."""
    return cls(**{f.name: getattr(args, f.name) for f in flag_fields(cls) if hasattr(args, f.name)})
