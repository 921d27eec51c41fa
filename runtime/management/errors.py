"""Errors raised by the management API (the CLI maps them to exit codes)."""

from __future__ import annotations


class ManagementError(Exception):
    """Base class of the management API's own errors; the message says what to do."""


class UnknownReactor(ManagementError, LookupError):
    """The reactor is not defined by the loaded application."""

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none: load the application (--app)"
        super().__init__(f"unknown reactor {name!r} (defined: {listed})")
        self.name = name


class NotFound(ManagementError, LookupError):
    """A task, document or runtime state that was asked for does not exist."""


class InvalidSelection(ManagementError, ValueError):
    """A task selection or query option cannot be used (e.g. a source filter of the wrong
    type)."""
