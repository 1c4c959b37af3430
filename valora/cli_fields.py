"""Frozen config dataclasses <-> command-line flags, defined once on the fields themselves.

A field declared with ``option(default, "help", ...)`` becomes the flag ``--field-name`` (or
``flag=``, with ``aliases=``); booleans become ``--x / --no-x``. ``add_cli_args(cls, parser)`` adds
a dataclass's flags, ``from_cli(cls, args, **overrides)`` builds it from the parsed namespace, and
``split_kwargs`` routes keyword arguments to the dataclasses that own them by field name (the
offline ``LLM(model, **kwargs)``). Imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

_CLI = "cli"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    cli: bool = True,
    **argparse_kwargs: Any,
):
    """A dataclass field with its command-line flag (``cli=False``: no flag)."""
    meta = {_CLI: {"help": help, "flag": flag, "aliases": aliases, "kwargs": argparse_kwargs}}
    if not cli:
        meta = {}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for defaults of frozen configs")
    return dataclasses.field(default=default, metadata=meta)


def add_cli_args(cls, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_CLI)
        if spec is None:
            continue
        flags = [spec["flag"] or "--" + f.name.replace("_", "-"), *spec["aliases"]]
        kwargs = {"dest": f.name, "default": f.default, "help": _help(spec["help"], f.default)}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        kwargs.update(spec["kwargs"])
        parser.add_argument(*flags, **kwargs)


def from_cli(cls, args: argparse.Namespace, **overrides: Any):
    """``cls`` from the flags ``add_cli_args`` added (tuples for list-valued flags)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif f.metadata.get(_CLI) is not None and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def split_kwargs(kwargs: dict[str, Any], *classes) -> list[dict[str, Any]]:
    """One dict per class of the keyword arguments naming its fields (first class wins); a
    keyword no class has raises TypeError naming it."""
    parts: list[dict[str, Any]] = [{} for _ in classes]
    for key, value in kwargs.items():
        owner = next((i for i, cls in enumerate(classes) if key in field_names(cls)), None)
        if owner is None:
            raise TypeError(f"unknown option {key!r}")
        parts[owner][key] = tuple(value) if isinstance(value, list) else value
    return parts


def _help(text: str, default: Any) -> str:
    if default is None or default is dataclasses.MISSING or isinstance(default, bool):
        return text
    return f"{text} (default: {default})" if text else f"default: {default}"


def key_value_pairs(items: list[str], flag: str, form: str = "KEY=VALUE") -> list[tuple[str, str]]:
    """``KEY=VALUE`` command-line items -> (key, value) pairs in order; SystemExit naming
    ``flag`` and the expected ``form`` on a malformed one."""
    found = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise SystemExit(f"{flag} takes {form}, got {item!r}")
        found.append((key, value))
    return found
