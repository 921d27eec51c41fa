"""Handler of cron job 'daily_sales_report' (0 6 * * * (Europe/Berlin)).

Created once by `reactgen build`; this file is yours to edit. Every morning it records the
paid orders so far in one ``sales_reports`` document keyed by the previous day (Berlin time),
in the same transaction that marks the occurrence completed: a retry or a crash never reports a
day twice.
"""

from __future__ import annotations

import datetime

from generated.crons.daily_sales_report import Context


async def handle(ctx: Context) -> None:
    """Count the paid orders and their total, and record them as the day before's report."""
    day = ctx.local_time.date() - datetime.timedelta(days=1)
    cursor = await ctx.database["orders"].aggregate([
        {"$match": {"status": "paid"}},
        {"$group": {"_id": None, "orders": {"$sum": 1}, "total": {"$sum": "$total"}}}])
    rows = await cursor.to_list(1)
    summary = rows[0] if rows else {"orders": 0, "total": 0}
    async with ctx.database.client.start_session() as session, await session.start_transaction():
        await ctx.database["sales_reports"].update_one(
            {"_id": day.isoformat()},
            {"$set": {"orders": summary["orders"], "total": summary["total"],
                      "scheduledFor": ctx.scheduled_for, "trigger": ctx.trigger.value}},
            upsert=True, session=session)
        await ctx.mark_completed(session=session)
    ctx.logger.info("sales report for %s: %s paid order(s)", day, summary["orders"])
