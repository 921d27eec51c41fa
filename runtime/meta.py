"""The ``reactgen_meta`` collection: one small document per concern, addressed by ``_id``."""

from __future__ import annotations

META_COLLECTION = "reactgen_meta"
LEADER_ID = "leader"


def planner_id(database: str) -> str:
    """Resume position of the planner of one database."""
    return f"planner:{database}"


def throttle_id(reactor: str) -> str:
    """Cluster-wide pause of one reactor."""
    return f"throttle:{reactor}"


def reconciliation_id(database: str, collection: str) -> str:
    """Progress of a reconciliation scan over one source collection."""
    return f"reconcile:{database}.{collection}"
