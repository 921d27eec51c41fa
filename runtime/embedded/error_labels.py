"""The error labels mongod attaches to a failed command (drivers retry by them).

``RetryableWriteError`` (retryable writes, and commit/abort, failing with a retryable code),
``TransientTransactionError`` (statements of a transaction failing with a transient code, and a
commit failing with 251), ``ResumableChangeStreamError`` (change-stream getMores failing with a
resumable code).
"""

from __future__ import annotations

from typing import Protocol

from runtime.embedded.errors import RESUMABLE_CHANGE_STREAM_CODES, CommandError

# Codes that make a retryable write (or commit/abort) safe to retry: RetryableWriteError.
RETRYABLE_WRITE_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602,
                                   13435, 13436})
# Codes that abort a transaction in a way that retrying the whole transaction may fix (mongod
# counts the snapshot errors, SnapshotTooOld 239 and SnapshotUnavailable 246, among them).
TRANSIENT_TRANSACTION_CODES = frozenset({24, 112, 239, 246, 251, 267}) | RETRYABLE_WRITE_CODES
RETRYABLE_WRITE_LABEL = "RetryableWriteError"
TRANSIENT_LABEL = "TransientTransactionError"
RESUMABLE_LABEL = "ResumableChangeStreamError"


class Request(Protocol):
    """What the dispatcher knows about the failed command."""

    retryable_write: bool
    in_transaction: bool
    finishes_transaction: bool
    change_stream_get_more: bool


def add_labels(exc: CommandError, request: Request, from_fail_point: bool = False) -> None:
    """Add the error labels MongoDB would attach to this failure.

    An error injected by ``failCommand`` on a change-stream getMore gets no
    ResumableChangeStreamError label unless the fail point lists it: mongod raises it before
    the cursor code that adds that label (the spec tests rely on this).
    """

    def add(label: str) -> None:
        if label not in exc.labels:
            exc.labels.append(label)

    code = exc.code
    if (request.retryable_write or request.finishes_transaction) \
            and code in RETRYABLE_WRITE_CODES:
        add(RETRYABLE_WRITE_LABEL)
    if request.in_transaction and not request.finishes_transaction \
            and code in TRANSIENT_TRANSACTION_CODES:
        add(TRANSIENT_LABEL)
    if request.finishes_transaction and code == 251:
        add(TRANSIENT_LABEL)
    if request.change_stream_get_more and code in RESUMABLE_CHANGE_STREAM_CODES \
            and not from_fail_point:
        add(RESUMABLE_LABEL)
