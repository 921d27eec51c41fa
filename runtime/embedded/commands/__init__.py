"""Command handlers, one module per family; ``table.py`` lists every command and its handler."""

from runtime.embedded.commands.registry import CommandInfo
from runtime.embedded.commands.table import COMMANDS

__all__ = ["COMMANDS", "CommandInfo"]
