"""Handler of reactor 'sync_paid_orders' (collection 'orders').

Created once by `reactgen build`; this file is yours to edit. This example "pushes" the order to
an ERP by recording it in the ``erp_outbox`` collection, in the same transaction that marks the
task completed, so the push happens exactly once even if the worker crashes mid-way.
"""

from __future__ import annotations

from generated.reactors.sync_paid_orders import Context


async def handle(ctx: Context) -> None:
    """Send the paid order's ERP-relevant fields to the ERP outbox."""
    order = await ctx.get_document()
    async with ctx.database.client.start_session() as session, await session.start_transaction():
        await ctx.database["erp_outbox"].update_one(
            {"_id": order.id},
            {"$set": {"total": order.total, "status": order.status.value,
                      "items": [item.model_dump() for item in order.items or []]},
             "$inc": {"pushes": 1}},
            upsert=True, session=session)
        await ctx.mark_completed(session=session)
    ctx.logger.info("pushed order %s (total %.2f) to the ERP", order.id, order.total)
