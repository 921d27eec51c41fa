"""``validate``: check a collection's indexes against its documents (MongoDB 7.0's command).

mongod's ``validate`` walks the record store and every index and reports inconsistencies.
Here each index's entries are recomputed from the stored documents and compared with what the
index holds; a missing or extra entry makes the answer ``valid: false`` with one error per
index, in mongod's reply shape (``nrecords``, ``nIndexes``, ``keysPerIndex``,
``indexDetails``, ``valid``, ``errors``, ``warnings``...). ``full``, ``repair``,
``background``, ``enforceFastCount`` and ``metadata`` are accepted; nothing is repaired.
"""

from __future__ import annotations

from typing import Any

from runtime.embedded.commands.registry import CommandContext
from runtime.embedded.errors import CommandError, ErrorCode
from runtime.embedded.storage import Collection

_OPTIONS = ("full", "repair", "background", "enforceFastCount", "metadata", "checkBSONConformance",
            "scandata")


def _index_problems(coll: Collection) -> tuple[dict[str, int], dict[str, Any], list[str]]:
    keys_per_index: dict[str, int] = {}
    details: dict[str, Any] = {}
    errors: list[str] = []
    for name, index in coll.indexes.items():
        if not hasattr(index, "entries"):  # the _id index is the document map itself
            keys_per_index[name] = len(coll.docs)
            details[name] = {"valid": True}
            continue
        expected = {components + (doc_id,)
                    for doc_id, doc in coll.docs.items()
                    for components in index.keys_for(doc)}
        stored = set(index.entries)
        missing, extra = len(expected - stored), len(stored - expected)
        keys_per_index[name] = len(stored)
        details[name] = {"valid": not (missing or extra)}
        if missing:
            errors.append(f"index '{name}' is missing {missing} entries for stored documents")
        if extra:
            errors.append(f"index '{name}' has {extra} entries for no stored document")
    return keys_per_index, details, errors


async def validate(ctx: CommandContext) -> dict[str, Any]:
    """Answer ``validate`` for one collection."""
    name = ctx.collection_name()
    for option in _OPTIONS:
        value = ctx.body.get(option)
        if value is not None and not isinstance(value, bool) and option != "metadata":
            raise CommandError(ErrorCode.TypeMismatch,
                               f"BSON field 'validate.{option}' is the wrong type, expected "
                               "type 'bool'")
    coll = ctx.access.collection(ctx.db, name)
    if coll is None:
        raise CommandError(ErrorCode.NamespaceNotFound,
                           f"Collection '{ctx.namespace(name)}' does not exist to validate.")
    keys_per_index, details, errors = _index_problems(coll)
    return {
        "ns": coll.namespace,
        "uuid": coll.uuid,
        "nInvalidDocuments": 0,
        "nNonCompliantDocuments": 0,
        "nrecords": len(coll.docs),
        "nIndexes": len(coll.indexes),
        "keysPerIndex": keys_per_index,
        "indexDetails": details,
        "valid": not errors,
        "repaired": False,
        "warnings": [],
        "errors": errors,
        "extraIndexEntries": [],
        "missingIndexEntries": [],
        "corruptRecords": [],
        "ok": 1.0,
    }
