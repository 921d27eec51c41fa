"""Handler of reactor 'overdue_invoices' (collection 'invoices').

Created once by `reactgen build`; this file is yours to edit.
"""

from __future__ import annotations

from app.reactors.overdue_invoices import Context


async def handle(ctx: Context) -> None:
    """Called for each due task of this reactor; raise to fail (and retry) the execution.

    ``ctx.get_document(projection={...})`` loads only the projected fields, as a plain dict
    (stored field names and values, not validated) instead of the model.
    """
    document = await ctx.get_document()
    ctx.logger.info("handled %r", document)
