"""Handler of reactor 'defaults' (collection 'jobs').

Created once by `reactgen build`; this file is yours to edit.
"""

from __future__ import annotations

from app.reactors.defaults import Context


async def handle(ctx: Context) -> None:
    """Called for each due task of this reactor; raise to fail (and retry) the execution.

    ``ctx.get_document(projection={...})`` loads only the projected fields: the model's other
    fields then hold their defaults (None), not the document's values.
    """
    document = await ctx.get_document()
    ctx.logger.info("handled %r", document)
