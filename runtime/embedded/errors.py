"""MongoDB error documents raised by command handlers.

A handler raises :class:`CommandError`; the dispatcher turns it into ``{ok: 0, errmsg, code,
codeName, errorLabels}``. Write errors inside a batch use :class:`WriteError`, which the write
commands collect into ``writeErrors`` while the command itself still answers ``ok: 1``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """MongoDB's error codes, each named exactly as the server's ``codeName``.

    Codes without a name in MongoDB (assertion locations) are named ``Location<code>``, which is
    also what mongod answers as their ``codeName``.
    """

    InternalError = 1
    BadValue = 2
    NoSuchKey = 4
    HostUnreachable = 6
    HostNotFound = 7
    FailedToParse = 9
    UserNotFound = 11
    Unauthorized = 13
    TypeMismatch = 14
    Overflow = 15
    InvalidLength = 16
    ProtocolError = 17
    AuthenticationFailed = 18
    IllegalOperation = 20
    InvalidBSON = 22
    LockTimeout = 24
    NamespaceNotFound = 26
    IndexNotFound = 27
    PathNotViable = 28
    NonExistentPath = 29
    InvalidPath = 30
    RoleNotFound = 31
    ConflictingUpdateOperators = 40
    CursorNotFound = 43
    NamespaceExists = 48
    MaxTimeMSExpired = 50
    UserAlreadyExists = 51
    DollarPrefixedFieldName = 52
    EmptyFieldName = 56
    CommandNotFound = 59
    StaleShardVersion = 63
    ImmutableField = 66
    CannotCreateIndex = 67
    IndexAlreadyExists = 68
    InvalidOptions = 72
    InvalidNamespace = 73
    IndexOptionsConflict = 85
    IndexKeySpecsConflict = 86
    NetworkTimeout = 89
    ShutdownInProgress = 91
    UnsatisfiableWriteConcern = 100
    WriteConflict = 112
    CommandNotSupported = 115
    ConflictingOperationInProgress = 117
    FailedToSatisfyReadPreference = 133
    ReadConcernMajorityNotAvailableYet = 134
    ExceededMemoryLimit = 146
    StaleEpoch = 150
    CommandNotSupportedOnView = 166
    InvalidPipelineOperator = 168
    ClientMetadataCannotBeMutated = 186
    PrimarySteppedDown = 189
    InvalidIndexSpecificationOption = 197
    ElectionInProgress = 216
    IllegalOpMsgFlag = 223
    TransactionTooOld = 225
    RetryChangeStream = 234
    NotImplemented = 238
    ConversionFailure = 241
    TransactionAborted = 244
    NoSuchTransaction = 251
    TransactionCommitted = 256
    InvalidResumeToken = 260
    ExceededTimeLimit = 262
    OperationNotSupportedInTransaction = 263
    ChangeStreamFatalError = 280
    ChecksumMismatch = 282
    ChangeStreamHistoryLost = 286
    MechanismUnavailable = 334
    UnsupportedOpQueryCommand = 352
    SocketException = 9001
    Location10065 = 10065
    NotWritablePrimary = 10107
    BSONObjectTooLarge = 10334
    DuplicateKey = 11000
    InterruptedAtShutdown = 11600
    InterruptedDueToReplStateChange = 11602
    Location13113 = 13113
    StaleConfig = 13388
    NotPrimaryNoSecondaryOk = 13435
    NotPrimaryOrSecondary = 13436
    Location15956 = 15956
    Location15958 = 15958
    Location15973 = 15973
    Location15974 = 15974
    Location15975 = 15975
    Location16006 = 16006
    Location16020 = 16020
    Location16556 = 16556
    Location16610 = 16610
    Location16612 = 16612
    Location16866 = 16866
    Location16874 = 16874
    Location17080 = 17080
    Location17280 = 17280
    Location18533 = 18533
    Location18536 = 18536
    Location18628 = 18628
    Location28646 = 28646
    Location28667 = 28667
    Location28764 = 28764
    Location28818 = 28818
    Location31024 = 31024
    Location31276 = 31276
    Location40148 = 40148
    Location40156 = 40156
    Location40323 = 40323
    Location40324 = 40324
    Location40414 = 40414
    Location40415 = 40415
    Location40430 = 40430
    Location40431 = 40431
    Location40432 = 40432
    Location40433 = 40433
    Location40485 = 40485
    Location40517 = 40517
    Location40571 = 40571
    Location40587 = 40587
    Location40602 = 40602
    Location40674 = 40674
    NotARetryableWriteCommand = 50768
    Location51024 = 51024
    Location51081 = 51081
    Location51082 = 51082
    Location51083 = 51083
    Location51103 = 51103
    Location51104 = 51104
    Location51105 = 51105
    Location51106 = 51106
    Location51107 = 51107
    Location51108 = 51108
    Location51109 = 51109
    Location51110 = 51110
    Location51111 = 51111
    Location51132 = 51132
    Location51151 = 51151
    Location51156 = 51156
    Location51183 = 51183
    Location51186 = 51186
    Location51246 = 51246
    Location5626701 = 5626701
    Location5626702 = 5626702
    Location5739101 = 5739101

# Error codes whose failure of a change-stream getMore the driver may resume from; the server
# labels them ResumableChangeStreamError (the driver decides only by label at wire version >= 9).
RESUMABLE_CHANGE_STREAM_CODES = frozenset(
    {6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 13388, 234, 133, 43}
)


def code_name(code: int) -> str:
    """Return MongoDB's name for an error code, or ``"Location<code>"`` for location codes."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"Location{code}"


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
