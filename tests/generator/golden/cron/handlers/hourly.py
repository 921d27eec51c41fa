"""Handler of cron job 'hourly' (0 * * * * (UTC)).

Created once by `reactgen build`; this file is yours to edit.
"""

from __future__ import annotations

from app.crons.hourly import Context


async def handle(ctx: Context) -> None:
    """Called once per occurrence of this job; raise to fail (and retry) the execution."""
    ctx.logger.info("running the occurrence scheduled for %s", ctx.scheduled_for.isoformat())
