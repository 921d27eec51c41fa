"""Handler of cron job 'nightly_report' (30 2 * * 1-5 (Europe/Berlin)).

Created once by `reactgen build`; this file is yours to edit.
"""

from __future__ import annotations

from app.crons.nightly_report import Context


async def handle(ctx: Context) -> None:
    """Called once per occurrence of this job; raise to fail (and retry) the execution."""
    ctx.logger.info("running the occurrence scheduled for %s", ctx.scheduled_for.isoformat())
