"""The TTL monitor: deletes documents whose TTL index date is older than ``expireAfterSeconds``.

Deletes go through the normal write path, so they appear in change streams like any delete and
are logged like any write. Only documents the TTL index holds are candidates (a partial TTL
index never expires documents outside its filter). A document written by an open transaction
is left for a later pass rather than making that transaction fail with a write conflict.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from typing import Any

from runtime.embedded.datastore import DataStore, WriteUnit
from runtime.embedded.indexes import MAX_EXPIRE_AFTER_SECONDS, Index, ttl_problem
from runtime.embedded.ordering import DATE, MISSING, Key, get_path
from runtime.embedded.storage import Collection

log = logging.getLogger(__name__)

#: Deletes per committed unit (bounds the size of one log record).
DELETES_PER_UNIT = 5000
#: (collection uuid, index name, problem) already warned about.
_warned: set[tuple[str, str, str]] = set()


def _expired(value: Any, cutoff: datetime.datetime) -> bool:
    values = value if isinstance(value, list) else [value]
    dates = [v for v in values if isinstance(v, datetime.datetime)]
    return bool(dates) and min(dates) <= cutoff


def _candidates(index: Index, cutoff: datetime.datetime) -> Iterable[Key]:
    if index.spec.directions[0] > 0:
        return list(index.scan(((DATE,),), ((DATE, cutoff),)))
    # Descending: the entries are in reverse date order; take every indexed document.
    return list(dict.fromkeys(entry[-1] for entry in index.entries))


def _warn_once(coll: Collection, index: Index, problem: str) -> None:
    key = (bytes(coll.uuid).hex(), index.spec.name, problem)
    if key not in _warned:
        _warned.add(key)
        log.warning("TTL monitor skips index %r of %s: %s. Fix it with collMod "
                    "{index: {name: %r, expireAfterSeconds: <0..%d>}} or drop it",
                    index.spec.name, coll.namespace, problem, index.spec.name,
                    MAX_EXPIRE_AFTER_SECONDS)


def expire_documents(store: DataStore, now: datetime.datetime) -> int:
    """Delete every expired document; returns how many were deleted.

    An index whose options are invalid (stored by an older version) is skipped with one
    warning, and a failure on one index does not keep the others from being served.
    """
    unit = WriteUnit()
    deleted = 0
    locked = store.transaction_locks
    for coll in list(store.catalog.all_collections()):
        for index in list(coll.indexes.values()):
            ttl = index.spec.expire_after_seconds
            if ttl is None:
                continue
            problem = ttl_problem(ttl) if len(index.spec.key) == 1 else \
                "a compound index cannot be a TTL index"
            if problem is not None:
                _warn_once(coll, index, problem)
                continue
            try:
                path = index.spec.fields[0]
                cutoff = now - datetime.timedelta(seconds=ttl)
                for key in _candidates(index, cutoff):
                    doc = coll.docs.get(key)
                    if doc is None or (coll.db, coll.name, key) in locked:
                        continue
                    value = get_path(doc, path)
                    if value is not MISSING and _expired(value, cutoff):
                        store.delete(unit, coll, doc)
                        deleted += 1
                        if len(unit.ops) >= DELETES_PER_UNIT:
                            store.commit(unit)
                            unit = WriteUnit()
            except Exception as exc:  # one broken index must not stop the others
                _warn_once(coll, index, f"{type(exc).__name__}: {exc}")
    store.commit(unit)
    return deleted
