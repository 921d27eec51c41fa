"""MongoDB error documents raised by command handlers.

A handler raises :class:`CommandError`; the dispatcher turns it into ``{ok: 0, errmsg, code,
codeName, errorLabels}``. Write errors inside a batch use :class:`WriteError`, which the write
commands collect into ``writeErrors`` while the command itself still answers ``ok: 1``.
"""

from __future__ import annotations

from typing import Any

CODE_NAMES: dict[int, str] = {
    1: "InternalError",
    2: "BadValue",
    6: "HostUnreachable",
    7: "HostNotFound",
    9: "FailedToParse",
    11: "UserNotFound",
    14: "TypeMismatch",
    17: "ProtocolError",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    28: "PathNotViable",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    56: "EmptyFieldName",
    59: "CommandNotFound",
    66: "ImmutableField",
    67: "CannotCreateIndex",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    112: "WriteConflict",
    115: "CommandNotSupported",
    166: "CommandNotSupportedOnView",
    189: "PrimarySteppedDown",
    216: "ElectionInProgress",
    225: "TransactionTooOld",
    244: "TransactionAborted",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    352: "UnsupportedOpQueryCommand",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13388: "StaleConfig",
    10107: "NotWritablePrimary",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    63: "StaleShardVersion",
    150: "StaleEpoch",
    234: "RetryChangeStream",
    133: "FailedToSatisfyReadPreference",
    9001: "SocketException",
    168: "InvalidPipelineOperator",
    50768: "NotARetryableWriteCommand",
    223: "IllegalOpMsgFlag",
    186: "ClientMetadataCannotBeMutated",
    134: "ReadConcernMajorityNotAvailableYet",
    117: "ConflictingOperationInProgress",
    100: "UnsatisfiableWriteConcern",
    24: "LockTimeout",
    22: "InvalidBSON",
    13: "Unauthorized",
    4: "NoSuchKey",
    15: "Overflow",
    16: "InvalidLength",
    18: "AuthenticationFailed",
    29: "NonExistentPath",
    30: "InvalidPath",
    31: "RoleNotFound",
    51: "UserAlreadyExists",
    68: "IndexAlreadyExists",
    146: "ExceededMemoryLimit",
    197: "InvalidIndexSpecificationOption",
    238: "NotImplemented",
    241: "ConversionFailure",
    334: "MechanismUnavailable",
    10334: "BSONObjectTooLarge",
    282: "ChecksumMismatch",
}

# Error codes whose failure of a change-stream getMore the driver may resume from; the server
# labels them ResumableChangeStreamError (the driver decides only by label at wire version >= 9).
RESUMABLE_CHANGE_STREAM_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133, 43}
)


def code_name(code: int) -> str:
    """Return MongoDB's name for an error code, or ``"Location<code>"`` for location codes."""
    return CODE_NAMES.get(code, f"Location{code}")


class CommandError(Exception):
    """A command failed as a whole; answered as ``ok: 0``."""

    def __init__(
        self,
        code: int,
        message: str,
        labels: list[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.labels = list(labels or [])
        self.extra = dict(extra or {})

    def to_document(self) -> dict[str, Any]:
        """Render the error as MongoDB's command error document."""
        doc: dict[str, Any] = {
            "ok": 0.0,
            "errmsg": self.message,
            "code": self.code,
            "codeName": code_name(self.code),
        }
        doc.update(self.extra)
        if self.labels:
            doc["errorLabels"] = self.labels
        return doc


class WriteError(Exception):
    """One statement of a write batch failed; reported in ``writeErrors``."""

    def __init__(self, code: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = dict(extra or {})

    def to_document(self, index: int) -> dict[str, Any]:
        """Render the error as one entry of a ``writeErrors`` array."""
        doc: dict[str, Any] = {"index": index, "code": self.code, "errmsg": self.message}
        doc.update(self.extra)
        return doc

    def as_command_error(self) -> CommandError:
        """The same failure reported as a whole-command error (findAndModify, transactions)."""
        return CommandError(self.code, self.message, extra=self.extra)
