"""Flags with environment twins, shared by every ``runtime`` command (``serve``, ``dashboard``,
the management commands): one table per command of :class:`Flag` rows, one way to add them to a
parser, and one way to read them (a flag wins over its variable, then the default), with errors
that name the flag or the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class UsageError(Exception):
    """A flag or environment variable has an unusable value; the message names both."""


@dataclass(frozen=True)
class Flag:
    """One setting: its flag, how its text is parsed, and its help."""

    name: str
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str
    switch: bool = False
    """A flag without a value (``--reload``); its variable takes 1/0, true/false, yes/no."""


def text(value: str) -> str:
    """Any non-empty text."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def positive_int(value: str) -> int:
    """An integer above zero."""
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ValueError(f"must be a positive integer, got {value!r}")
    return number


def port(value: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        number = int(value.strip())
    except ValueError:
        raise ValueError(f"must be a port number (0-65535), got {value!r}") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"must be a port number (0-65535), got {value!r}")
    return number


def one_of(*choices: str, upper: bool = False) -> Callable[[str], str]:
    """A parser accepting one of ``choices`` (case-insensitive)."""
    def parse(value: str) -> str:
        chosen = value.strip().upper() if upper else value.strip().lower()
        if chosen not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return chosen
    return parse


log_level = one_of(*LOG_LEVELS, upper=True)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def boolean(value: str) -> bool:
    """On or off: 1/true/yes/on or 0/false/no/off (case-insensitive)."""
    chosen = value.strip().lower()
    if chosen in _TRUE:
        return True
    if chosen in _FALSE:
        return False
    raise ValueError(f"must be one of {', '.join(_TRUE + _FALSE)}, got {value!r}")


def add_flags(parser: argparse.ArgumentParser | Any, flags: Iterable[Flag],
              environment: Mapping[str, str], defaults: Mapping[str, Any]) -> None:
    """Add ``flags`` to ``parser`` (or an argument group), each help naming its default (when
    ``defaults`` has one) and its environment variable."""
    for spec in flags:
        default = defaults.get(spec.name)
        if isinstance(default, bool):
            default = "on" if default else "off"
        shown = f" (default: {default})" if default is not None else ""
        if spec.switch:
            parser.add_argument(spec.flag, dest=spec.name, default=None, action="store_const",
                                const="1", help=f"{spec.help} [env {environment[spec.name]}]")
            continue
        parser.add_argument(spec.flag, dest=spec.name, default=None, metavar=spec.metavar,
                            help=f"{spec.help}{shown} [env {environment[spec.name]}]")


def read_flags(args: argparse.Namespace, flags: Iterable[Flag],
               environment: Mapping[str, str]) -> dict[str, Any]:
    """The values given as flags or else as environment variables (validated); settings given
    neither way are absent. Raises :class:`UsageError` naming the flag or variable."""
    values: dict[str, Any] = {}
    for spec in flags:
        variable = environment[spec.name]
        raw = getattr(args, spec.name, None)
        source = spec.flag
        if raw is None:
            raw = os.environ.get(variable) or None
            source = f"{variable} (environment, for {spec.flag})"
        if raw is None:
            continue
        try:
            values[spec.name] = spec.parse(raw)
        except ValueError as exc:
            raise UsageError(f"{source} {exc}") from None
    return values
