"""``commitTransaction`` and ``abortTransaction``; the session bookkeeping is in the dispatcher."""

from __future__ import annotations

from typing import Any

from runtime.embedded.commands.registry import CommandContext


async def commit_transaction(ctx: CommandContext) -> dict[str, Any]:
    """Commit the session's transaction (handled by the dispatcher's transaction logic)."""
    return await ctx.state.finish_transaction(ctx, commit=True)


async def abort_transaction(ctx: CommandContext) -> dict[str, Any]:
    """Abort the session's transaction."""
    return await ctx.state.finish_transaction(ctx, commit=False)
