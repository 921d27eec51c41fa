"""Handler of reactor 'recalculate_product_rating' (collection 'reviews').

Created once by `reactgen build`; this file is yours to edit. It recomputes the average rating
of the reviewed product from all its visible reviews.
"""

from __future__ import annotations

from generated.reactors.recalculate_product_rating import Context


async def handle(ctx: Context) -> None:
    """Store the average of the product's visible reviews on the product."""
    review = await ctx.get_document()
    cursor = await ctx.database["reviews"].aggregate([
        {"$match": {"productId": review.product_id, "hidden": {"$ne": True}}},
        {"$group": {"_id": None, "rating": {"$avg": "$rating"}, "count": {"$sum": 1}}},
    ])
    stats = await cursor.to_list(1)
    rating = stats[0]["rating"] if stats else None
    count = stats[0]["count"] if stats else 0
    await ctx.database["products"].update_one(
        {"_id": review.product_id}, {"$set": {"rating": rating, "reviewCount": count}},
        upsert=True)
    ctx.logger.info("product %s rating %s from %d reviews", review.product_id, rating, count)
