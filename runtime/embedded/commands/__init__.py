"""Command handlers, one module per family; importing this package registers all of them."""

from runtime.embedded.commands import (  # noqa: F401  (imported for registration)
    aggregation,
    catalog,
    crud,
    diagnostics,
    explain,
    handshake,
    testing,
    transactions,
    users,
    validate,
)
from runtime.embedded.commands.registry import COMMANDS, CommandInfo

__all__ = ["COMMANDS", "CommandInfo"]
