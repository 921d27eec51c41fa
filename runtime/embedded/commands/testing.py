"""Test-only commands, enabled with --enable-test-commands."""

from __future__ import annotations

from typing import Any

from runtime.embedded.commands.registry import CommandContext


async def configure_fail_point(ctx: CommandContext) -> dict[str, Any]:
    """Turn a fail point on or off (see :mod:`runtime.embedded.failpoints`)."""
    count = ctx.state.failpoints.configure(ctx.body)
    return {"count": count, "ok": 1.0}
