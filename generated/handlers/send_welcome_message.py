"""Handler of reactor 'send_welcome_message' (collection 'users').

Created once by `reactgen build`; this file is yours to edit. The example queues a welcome
e-mail in the ``outbox`` collection; an e-mail service would pick it up from there.
"""

from __future__ import annotations

from generated.reactors.send_welcome_message import Context


async def handle(ctx: Context) -> None:
    """Queue one welcome e-mail per new user."""
    user = await ctx.get_document()
    await ctx.database["outbox"].update_one(
        {"_id": f"welcome:{user.id}"},
        {"$setOnInsert": {"to": user.email, "subject": f"Welcome, {user.name or user.email}!"}},
        upsert=True)
    ctx.logger.info("welcome message queued for %s", user.email)
