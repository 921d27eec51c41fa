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
    NoMatchingDocument = 47
    NamespaceExists = 48
    MaxTimeMSExpired = 50
    UserAlreadyExists = 51
    DollarPrefixedFieldName = 52
    InvalidIdField = 53
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
    GraphContainsCycle = 93
    UnsatisfiableWriteConcern = 100
    WriteConflict = 112
    CommandNotSupported = 115
    ConflictingOperationInProgress = 117
    DocumentValidationFailure = 121
    FailedToSatisfyReadPreference = 133
    ReadConcernMajorityNotAvailableYet = 134
    CursorInUse = 143
    ExceededMemoryLimit = 146
    StaleEpoch = 150
    IncompatibleCollationVersion = 161
    ViewDepthLimitExceeded = 165
    CommandNotSupportedOnView = 166
    OptionNotSupportedOnView = 167
    InvalidPipelineOperator = 168
    InvalidViewDefinition = 182
    ClientMetadataCannotBeMutated = 186
    PrimarySteppedDown = 189
    InvalidIndexSpecificationOption = 197
    ElectionInProgress = 216
    IllegalOpMsgFlag = 223
    TransactionTooOld = 225
    RetryChangeStream = 234
    NotImplemented = 238
    SnapshotTooOld = 239
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
    Location16007 = 16007
    Location16020 = 16020
    Location16034 = 16034
    Location16035 = 16035
    Location16556 = 16556
    Location16610 = 16610
    Location16612 = 16612
    Location16866 = 16866
    Location16874 = 16874
    Location17040 = 17040
    Location17041 = 17041
    Location17053 = 17053
    Location17080 = 17080
    Location17124 = 17124
    Location17280 = 17280
    Location18533 = 18533
    Location18536 = 18536
    Location18628 = 18628
    Location28646 = 28646
    Location28651 = 28651
    Location28656 = 28656
    Location28667 = 28667
    Location28714 = 28714
    Location28724 = 28724
    Location28725 = 28725
    Location28726 = 28726
    Location28727 = 28727
    Location28728 = 28728
    Location28729 = 28729
    Location28764 = 28764
    Location28803 = 28803
    Location28818 = 28818
    Location31024 = 31024
    Location31276 = 31276
    Location31393 = 31393
    Location34435 = 34435
    Location34444 = 34444
    Location34446 = 34446
    Location34448 = 34448
    Location34449 = 34449
    Location34450 = 34450
    Location34452 = 34452
    Location34454 = 34454
    Location34455 = 34455
    Location34460 = 34460
    Location34465 = 34465
    Location34468 = 34468
    Location34471 = 34471
    Location34473 = 34473
    Location40066 = 40066
    Location40091 = 40091
    Location40092 = 40092
    Location40093 = 40093
    Location40094 = 40094
    Location40096 = 40096
    Location40097 = 40097
    Location40148 = 40148
    Location40156 = 40156
    Location40228 = 40228
    Location40323 = 40323
    Location40324 = 40324
    Location40386 = 40386
    Location40398 = 40398
    Location40414 = 40414
    Location40415 = 40415
    Location40430 = 40430
    Location40431 = 40431
    Location40432 = 40432
    Location40433 = 40433
    Location40485 = 40485
    Location40489 = 40489
    Location40516 = 40516
    Location40517 = 40517
    Location40520 = 40520
    Location40521 = 40521
    Location40522 = 40522
    Location40523 = 40523
    Location40571 = 40571
    Location40587 = 40587
    Location40600 = 40600
    Location40602 = 40602
    Location40674 = 40674
    Location40684 = 40684
    Location50752 = 50752
    NotARetryableWriteCommand = 50768
    Location51024 = 51024
    Location51047 = 51047
    Location51081 = 51081
    Location51082 = 51082
    Location51083 = 51083
    Location51091 = 51091
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
    Location5858203 = 5858203
    Location5687301 = 5687301
    Location5687302 = 5687302
    Location5739101 = 5739101
    Location50989 = 50989
    Location51276 = 51276
    Location51746 = 51746
    Location51748 = 51748
    Location51750 = 51750
    Location51751 = 51751
    Location327391 = 327391
    Location2942504 = 2942504
    Location2942505 = 2942505
    Location3040500 = 3040500
    Location3041701 = 3041701
    Location3041702 = 3041702
    Location4161100 = 4161100
    Location4161105 = 4161105
    Location4161106 = 4161106
    Location5166403 = 5166403
    Location5166405 = 5166405
    Location5166406 = 5166406
    Location5439014 = 5439014
    Location5439015 = 5439015
    Location5439017 = 5439017
    Location5447000 = 5447000
    Location5654602 = 5654602
    Location5787901 = 5787901
    Location5787908 = 5787908
    Location5788001 = 5788001
    Location5788005 = 5788005
    Location5788200 = 5788200
    Location7750301 = 7750301

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
