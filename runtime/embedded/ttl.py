"""The TTL monitor: deletes documents whose TTL index date is older than ``expireAfterSeconds``.

Deletes go through the normal write path, so they appear in change streams like any delete.
"""

from __future__ import annotations

import datetime
from typing import Any

from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.ordering import DATE, MISSING, get_path


def _expired(value: Any, cutoff: datetime.datetime) -> bool:
    values = value if isinstance(value, list) else [value]
    dates = [v for v in values if isinstance(v, datetime.datetime)]
    return bool(dates) and min(dates) <= cutoff


def expire_documents(store: DataStore, now: datetime.datetime) -> int:
    """Delete every expired document; returns how many were deleted."""
    unit = WriteUnit()
    deleted = 0
    for coll in list(store.catalog.all_collections()):
        for index in list(coll.indexes.values()):
            ttl = index.spec.expire_after_seconds
            if ttl is None or len(index.spec.key) != 1:
                continue
            path = index.spec.fields[0]
            cutoff = now - datetime.timedelta(seconds=ttl)
            keys = list(index.scan(((DATE,),), ((DATE, cutoff),))) if index.spec.directions[0] \
                > 0 else [k for k in coll.docs]
            for key in keys:
                doc = coll.docs.get(key)
                if doc is None:
                    continue
                value = get_path(doc, path)
                if value is not MISSING and _expired(value, cutoff):
                    store.delete(unit, coll, doc)
                    deleted += 1
    store.commit(unit)
    return deleted
