"""Handler of cron job 'heart-beat.v2' (every 30000 ms).

Created once by `reactgen build`; this file is yours to edit.
"""

from __future__ import annotations

from app.crons.heart_beat_v2 import Context


async def handle(ctx: Context) -> None:
    """Called once per occurrence of this job; raise to fail (and retry) the execution."""
    ctx.logger.info("running the occurrence scheduled for %s", ctx.scheduled_for.isoformat())
