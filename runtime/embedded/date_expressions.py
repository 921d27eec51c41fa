"""Date and timestamp expressions that mongomock-ng lacks or gets wrong.

``$dateToString`` (all of MongoDB's format specifiers, time zones), the ISO week operators,
``$dateToParts`` and ``$tsSecond``/``$tsIncrement``. A null or missing date gives null.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from bson import ObjectId
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from runtime.embedded.comparison import bson_type_name
from runtime.embedded.engine_support import NOTHING
from runtime.embedded.errors import ErrorCode

_DATE_FORMATS: dict[str, Callable[[datetime.datetime], str]] = {
    "Y": lambda d: f"{d.year:04d}",
    "m": lambda d: f"{d.month:02d}",
    "d": lambda d: f"{d.day:02d}",
    "H": lambda d: f"{d.hour:02d}",
    "M": lambda d: f"{d.minute:02d}",
    "S": lambda d: f"{d.second:02d}",
    "L": lambda d: f"{d.microsecond // 1000:03d}",
    "j": lambda d: f"{d.timetuple().tm_yday:03d}",
    "w": lambda d: str(d.isoweekday() % 7 + 1),
    "u": lambda d: str(d.isoweekday()),
    "U": lambda d: d.strftime("%U"),
    "V": lambda d: f"{d.isocalendar()[1]:02d}",
    "G": lambda d: f"{d.isocalendar()[0]:04d}",
    "b": lambda d: d.strftime("%b"),
    "B": lambda d: d.strftime("%B"),
    "z": lambda d: d.strftime("%z") or "+0000",
    "Z": lambda d: str(int((d.utcoffset() or datetime.timedelta()).total_seconds() // 60)),
    "%": lambda d: "%",
}


def time_zone(zone: Any) -> datetime.tzinfo:
    """The time zone a ``timezone`` argument names (an Olson name or a UTC offset such as
    ``+05:30``); UTC for null or missing."""
    import zoneinfo

    if zone is None or zone is NOTHING:
        return datetime.UTC
    if not isinstance(zone, str):
        raise OperationFailure("timezone must evaluate to a string", code=ErrorCode.Location40517)
    offset = re.fullmatch(r"([+-])(\d{2}):?(\d{2})?", zone)
    if offset:
        minutes = int(offset.group(2)) * 60 + int(offset.group(3) or 0)
        sign = -1 if offset.group(1) == "-" else 1
        return datetime.timezone(datetime.timedelta(minutes=sign * minutes))
    try:
        return zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise OperationFailure(f"unrecognized time zone identifier: \"{zone}\"",
                               code=ErrorCode.Location40485) from exc


def _in_timezone(date: datetime.datetime, zone: Any) -> datetime.datetime:
    utc = date.replace(tzinfo=datetime.UTC) if date.tzinfo is None else date
    return utc.astimezone(time_zone(zone))


def _date_to_string_expression(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, dict) or "date" not in operand:
        raise OperationFailure("Missing 'date' parameter to $dateToString",
                               code=ErrorCode.Location18628)
    date = parser.parse(operand["date"])
    if date is None or date is NOTHING:
        return parser.parse(operand["onNull"]) if "onNull" in operand else None
    if not isinstance(date, datetime.datetime):
        raise OperationFailure("can't convert from BSON type "
                               f"{bson_type_name(date)} to Date", code=ErrorCode.Location16006)
    fmt = parser.parse(operand.get("format", "%Y-%m-%dT%H:%M:%S.%LZ"))
    if not isinstance(fmt, str):
        raise OperationFailure("$dateToString requires that 'format' be a string",
                               code=ErrorCode.Location18533)
    local = _in_timezone(date, parser.parse(operand["timezone"]) if "timezone" in operand
                         else None)
    out: list[str] = []
    position = 0
    while position < len(fmt):
        char = fmt[position]
        if char != "%":
            out.append(char)
            position += 1
            continue
        spec = fmt[position + 1: position + 2]
        if spec not in _DATE_FORMATS:
            raise OperationFailure(f"Invalid format character '%{spec}' in format string",
                                   code=ErrorCode.Location18536)
        out.append(_DATE_FORMATS[spec](local))
        position += 2
    return "".join(out)


def date_argument(parser: Any, operand: Any, name: str) -> datetime.datetime | None:
    """The date of a date operator's argument (``date`` or ``{date, timezone}``), in its time
    zone; None for a null or missing date."""
    if isinstance(operand, list):
        if len(operand) != 1:
            raise OperationFailure(f"Expression {name} takes exactly 1 arguments. "
                                   f"{len(operand)} were passed in.",
                                   code=ErrorCode.Location16020)
        operand = operand[0]
    zone = None
    if isinstance(operand, dict) and "date" in operand:
        zone = parser.parse(operand["timezone"]) if "timezone" in operand else None
        operand = operand["date"]
    value = parser.parse(operand)
    if value is None or value is NOTHING:
        return None
    if isinstance(value, Timestamp):
        value = value.as_datetime()
    elif isinstance(value, ObjectId):
        value = value.generation_time
    if not isinstance(value, datetime.datetime):
        raise OperationFailure(f"can't convert from BSON type {bson_type_name(value)} to Date",
                               code=ErrorCode.Location16006)
    return _in_timezone(value, zone)


def _date_part(name: str, part: Callable[[datetime.datetime], int]) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        date = date_argument(parser, operand, name)
        return None if date is None else part(date)

    return evaluate


def _date_to_parts_expression(parser: Any, operand: Any) -> Any:
    if not isinstance(operand, dict) or "date" not in operand:
        raise OperationFailure("Missing 'date' parameter to $dateToParts",
                               code=ErrorCode.Location40522)
    unknown = set(operand) - {"date", "timezone", "iso8601"}
    if unknown:
        raise OperationFailure(f"Unrecognized argument to $dateToParts: {sorted(unknown)[0]}",
                               code=ErrorCode.Location40520)
    date = date_argument(parser, {k: v for k, v in operand.items() if k != "iso8601"},
                          "$dateToParts")
    iso = parser.parse(operand["iso8601"]) if "iso8601" in operand else False
    if date is None or iso is None or iso is NOTHING:
        return None
    if not isinstance(iso, bool):
        raise OperationFailure("iso8601 must evaluate to a bool", code=ErrorCode.Location40521)
    clock = {"hour": date.hour, "minute": date.minute, "second": date.second,
             "millisecond": date.microsecond // 1000}
    if iso:
        year, week, day = date.isocalendar()
        return {"isoWeekYear": year, "isoWeek": week, "isoDayOfWeek": day, **clock}
    return {"year": date.year, "month": date.month, "day": date.day, **clock}


def _timestamp_part(name: str, code: ErrorCode, increment: bool) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        args = operand if isinstance(operand, list) else [operand]
        if len(args) != 1:
            raise OperationFailure(f"Expression {name} takes exactly 1 arguments. "
                                   f"{len(args)} were passed in.", code=ErrorCode.Location16020)
        value = parser.parse(args[0])
        if value is None or value is NOTHING:
            return None
        if not isinstance(value, Timestamp):
            raise OperationFailure(f"Argument to {name} must be a timestamp, but is "
                                   f"{bson_type_name(value)}", code=code)
        return Int64(value.inc if increment else value.time)

    return evaluate


#: The date expression operators this module implements, by name.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "$dateToString": _date_to_string_expression,
    "$dateToParts": _date_to_parts_expression,
    "$year": _date_part("$year", lambda d: d.year),
    "$month": _date_part("$month", lambda d: d.month),
    "$dayOfMonth": _date_part("$dayOfMonth", lambda d: d.day),
    "$dayOfYear": _date_part("$dayOfYear", lambda d: d.timetuple().tm_yday),
    "$dayOfWeek": _date_part("$dayOfWeek", lambda d: d.isoweekday() % 7 + 1),
    "$week": _date_part("$week", lambda d: int(d.strftime("%U"))),
    "$hour": _date_part("$hour", lambda d: d.hour),
    "$minute": _date_part("$minute", lambda d: d.minute),
    "$second": _date_part("$second", lambda d: d.second),
    "$millisecond": _date_part("$millisecond", lambda d: d.microsecond // 1000),
    "$isoWeek": _date_part("$isoWeek", lambda d: d.isocalendar()[1]),
    "$isoWeekYear": _date_part("$isoWeekYear", lambda d: d.isocalendar()[0]),
    "$isoDayOfWeek": _date_part("$isoDayOfWeek", lambda d: d.isocalendar()[2]),
    "$tsSecond": _timestamp_part("$tsSecond", ErrorCode.Location5687301, increment=False),
    "$tsIncrement": _timestamp_part("$tsIncrement", ErrorCode.Location5687302, increment=True),
}
