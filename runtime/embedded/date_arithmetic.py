"""Date arithmetic expressions: ``$dateAdd``, ``$dateSubtract``, ``$dateDiff``, ``$dateTrunc``,
``$dateFromParts``, ``$dateFromString`` (with ``format``) and ``$toString`` of a date.

Calendar units (year, quarter, month, week, day) work on the wall clock of the ``timezone``
argument (UTC by default): adding a month to January 31 gives the last day of February, a day
is a calendar day across a daylight-saving change. Smaller units are fixed durations. Any null
or missing argument makes the result null. Results are UTC dates, as BSON stores them.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bson import ObjectId
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.timestamp import Timestamp
from pymongo.errors import OperationFailure

from runtime.embedded.comparison import bson_type_name
from runtime.embedded.date_expressions import time_zone
from runtime.embedded.engine_support import NOTHING
from runtime.embedded.errors import ErrorCode

_MONTHS = {"year": 12, "quarter": 3, "month": 1}
_FIXED_MS = {"week": 7 * 86_400_000, "day": 86_400_000, "hour": 3_600_000, "minute": 60_000,
             "second": 1000, "millisecond": 1}
_UNITS = frozenset({*_MONTHS, *_FIXED_MS})
_WEEKDAYS = {name: index for index, name in enumerate(
    ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
_EPOCH = datetime.datetime(1970, 1, 1)
# $dateTrunc bins are counted from this reference instant (in the time zone's wall clock).
_REFERENCE = datetime.datetime(2000, 1, 1)


def _nullish(value: Any) -> bool:
    return value is None or value is NOTHING


def _spec(operand: Any, name: str, required: tuple[str, ...],
          allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(operand, dict):
        raise OperationFailure(f"{name} expects an object as its argument",
                               code=ErrorCode.FailedToParse)
    for key in operand:
        if key not in allowed:
            raise OperationFailure(f"Unrecognized argument to {name}: {key}. Expected "
                                   f"arguments: {', '.join(sorted(allowed))}",
                                   code=ErrorCode.FailedToParse)
    for key in required:
        if key not in operand:
            raise OperationFailure(f"Missing '{key}' parameter to {name}",
                                   code=ErrorCode.FailedToParse)
    return operand


def _as_date(value: Any, name: str, what: str) -> datetime.datetime:
    if isinstance(value, Timestamp):
        value = value.as_datetime()
    elif isinstance(value, ObjectId):
        value = value.generation_time
    if not isinstance(value, datetime.datetime):
        raise OperationFailure(f"{name} requires '{what}' to be a date, but got "
                               f"{bson_type_name(value)}", code=ErrorCode.Location5166403)
    date: datetime.datetime = value
    if date.tzinfo is not None:
        date = date.astimezone(datetime.UTC).replace(tzinfo=None)
    return date


def _unit(value: Any, name: str) -> str:
    if not isinstance(value, str) or value not in _UNITS:
        raise OperationFailure(f"{name} requires 'unit' to be a valid time unit, got {value!r}",
                               code=ErrorCode.Location5439014)
    return value


def _integer(value: Any, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal128):
        raise OperationFailure(f"{name} expects integer '{what}', got {bson_type_name(value)}",
                               code=ErrorCode.Location5166405)
    number = value.to_decimal() if isinstance(value, Decimal128) else value
    if not number.is_finite() if isinstance(number, Decimal) else not math.isfinite(number):
        raise OperationFailure(f"{name} expects integer '{what}', got {value!r}",
                               code=ErrorCode.Location5166405)
    if number != int(number):
        raise OperationFailure(f"{name} expects integer '{what}', got {value!r}",
                               code=ErrorCode.Location5166405)
    return int(number)


def _local(date: datetime.datetime, zone: datetime.tzinfo) -> datetime.datetime:
    """The wall-clock time (naive) of a UTC date in ``zone``."""
    return date.replace(tzinfo=datetime.UTC).astimezone(zone).replace(tzinfo=None)


def _utc(local: datetime.datetime, zone: datetime.tzinfo) -> datetime.datetime:
    """The UTC date (naive) of a wall-clock time in ``zone``."""
    return local.replace(tzinfo=zone).astimezone(datetime.UTC).replace(tzinfo=None)


def _add_months(local: datetime.datetime, months: int) -> datetime.datetime:
    total = local.year * 12 + local.month - 1 + months
    year, month = divmod(total, 12)
    if not 1 <= year <= 9999:
        raise OperationFailure("$dateAdd overflowed", code=ErrorCode.Location5166406)
    day = min(local.day, calendar.monthrange(year, month + 1)[1])
    return local.replace(year=year, month=month + 1, day=day)


def _date_add(name: str, sign: int) -> Callable[[Any, Any], Any]:
    def evaluate(parser: Any, operand: Any) -> Any:
        spec = _spec(operand, name, ("startDate", "unit", "amount"),
                     frozenset({"startDate", "unit", "amount", "timezone"}))
        start, unit, amount = (parser.parse(spec[k]) for k in ("startDate", "unit", "amount"))
        zone_value = parser.parse(spec["timezone"]) if "timezone" in spec else None
        if any(_nullish(v) for v in (start, unit, amount)):
            return None
        date = _as_date(start, name, "startDate")
        unit = _unit(unit, name)
        steps = _integer(amount, name, "amount") * sign
        zone = time_zone(zone_value)
        if unit in _MONTHS:
            return _utc(_add_months(_local(date, zone), steps * _MONTHS[unit]), zone)
        if unit in ("week", "day"):
            days = steps * (7 if unit == "week" else 1)
            return _utc(_local(date, zone) + datetime.timedelta(days=days), zone)
        return date + datetime.timedelta(milliseconds=steps * _FIXED_MS[unit])

    return evaluate


def _week_start(value: Any, name: str) -> int:
    if not isinstance(value, str) or value.lower() not in _WEEKDAYS:
        raise OperationFailure(f"{name} requires 'startOfWeek' to be a day of the week, got "
                               f"{value!r}", code=ErrorCode.Location5439015)
    return _WEEKDAYS[value.lower()]


def _week_number(local: datetime.datetime, first_day: int) -> int:
    """Weeks (starting on ``first_day``, 0 = Monday) since an arbitrary fixed origin."""
    days = (local.date() - datetime.date(1970, 1, 5)).days  # 1970-01-05 was a Monday
    return (days - first_day) // 7


def _date_diff(parser: Any, operand: Any) -> Any:
    spec = _spec(operand, "$dateDiff", ("startDate", "endDate", "unit"),
                 frozenset({"startDate", "endDate", "unit", "timezone", "startOfWeek"}))
    start, end, unit = (parser.parse(spec[k]) for k in ("startDate", "endDate", "unit"))
    zone_value = parser.parse(spec["timezone"]) if "timezone" in spec else None
    week_value = parser.parse(spec["startOfWeek"]) if "startOfWeek" in spec else "sunday"
    if any(_nullish(v) for v in (start, end, unit, week_value)):
        return None
    zone = time_zone(zone_value)
    first = _local(_as_date(start, "$dateDiff", "startDate"), zone)
    last = _local(_as_date(end, "$dateDiff", "endDate"), zone)
    unit = _unit(unit, "$dateDiff")
    if unit in _MONTHS:
        months = (last.year * 12 + last.month) - (first.year * 12 + first.month)
        if unit == "month":
            return Int64(months)
        if unit == "year":
            return Int64(last.year - first.year)
        return Int64((last.year * 4 + (last.month - 1) // 3)
                     - (first.year * 4 + (first.month - 1) // 3))
    if unit == "week":
        first_day = _week_start(week_value, "$dateDiff")
        return Int64(_week_number(last, first_day) - _week_number(first, first_day))
    if unit == "day":
        return Int64((last.date() - first.date()).days)
    size = _FIXED_MS[unit]
    return Int64(_epoch_ms(last) // size - _epoch_ms(first) // size)


def _epoch_ms(local: datetime.datetime) -> int:
    delta = local - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _date_trunc(parser: Any, operand: Any) -> Any:
    spec = _spec(operand, "$dateTrunc", ("date", "unit"),
                 frozenset({"date", "unit", "binSize", "timezone", "startOfWeek"}))
    date, unit = parser.parse(spec["date"]), parser.parse(spec["unit"])
    size_value = parser.parse(spec["binSize"]) if "binSize" in spec else 1
    zone_value = parser.parse(spec["timezone"]) if "timezone" in spec else None
    week_value = parser.parse(spec["startOfWeek"]) if "startOfWeek" in spec else "sunday"
    if any(_nullish(v) for v in (date, unit, size_value, week_value)):
        return None
    zone = time_zone(zone_value)
    local = _local(_as_date(date, "$dateTrunc", "date"), zone)
    unit = _unit(unit, "$dateTrunc")
    size = _integer(size_value, "$dateTrunc", "binSize")
    if size <= 0:
        raise OperationFailure("$dateTrunc requires 'binSize' to be greater than 0",
                               code=ErrorCode.Location5439017)
    if unit in _MONTHS:
        months = (local.year - _REFERENCE.year) * 12 + local.month - 1
        start = months - months % (size * _MONTHS[unit])
        year, month = divmod(start, 12)
        return _utc(datetime.datetime(_REFERENCE.year + year, month + 1, 1), zone)
    if unit == "week":
        first_day = _week_start(week_value, "$dateTrunc")
        origin = _REFERENCE + datetime.timedelta(days=(first_day - _REFERENCE.weekday()) % 7)
        days = (local - origin).days
        return _utc(origin + datetime.timedelta(days=days - days % (7 * size)), zone)
    step = _FIXED_MS[unit] * size
    elapsed = _epoch_ms(local) - _epoch_ms(_REFERENCE)
    truncated = _REFERENCE + datetime.timedelta(milliseconds=elapsed - elapsed % step)
    return _utc(truncated, zone)


_CALENDAR_PARTS = ("year", "month", "day")
_ISO_PARTS = ("isoWeekYear", "isoWeek", "isoDayOfWeek")
_CLOCK_PARTS = ("hour", "minute", "second", "millisecond")


def _date_from_parts(parser: Any, operand: Any) -> Any:
    allowed = frozenset({*_CALENDAR_PARTS, *_ISO_PARTS, *_CLOCK_PARTS, "timezone"})
    spec = _spec(operand, "$dateFromParts", (), allowed)
    iso = "isoWeekYear" in spec
    if iso and any(k in spec for k in _CALENDAR_PARTS):
        raise OperationFailure("$dateFromParts does not allow mixing natural dates with ISO "
                               "dates", code=ErrorCode.Location40489)
    if not iso and "year" not in spec:
        raise OperationFailure("$dateFromParts requires either 'year' or 'isoWeekYear' to be "
                               "present", code=ErrorCode.Location40516)
    names = (_ISO_PARTS if iso else _CALENDAR_PARTS) + _CLOCK_PARTS
    defaults = {"month": 1, "day": 1, "isoWeek": 1, "isoDayOfWeek": 1}
    values: dict[str, int] = {}
    for key in names:
        value = parser.parse(spec[key]) if key in spec else defaults.get(key, 0)
        if _nullish(value):
            return None
        values[key] = _integer(value, "$dateFromParts", key)
    zone_value = parser.parse(spec["timezone"]) if "timezone" in spec else None
    if "timezone" in spec and _nullish(zone_value):
        return None
    year = values["isoWeekYear" if iso else "year"]
    if not 1 <= year <= 9999:
        raise OperationFailure(f"'{'isoWeekYear' if iso else 'year'}' must evaluate to an "
                               "integer in the range 1 to 9999", code=ErrorCode.Location40523)
    if iso:
        base = datetime.datetime.fromisocalendar(year, 1, 1) + datetime.timedelta(
            weeks=values["isoWeek"] - 1, days=values["isoDayOfWeek"] - 1)
    else:
        base = _add_months(datetime.datetime(year, 1, 1), values["month"] - 1)
        base += datetime.timedelta(days=values["day"] - 1)
    local = base + datetime.timedelta(hours=values["hour"], minutes=values["minute"],
                                      seconds=values["second"],
                                      milliseconds=values["millisecond"])
    return _utc(local, time_zone(zone_value))


_FORMAT_PARTS = {
    "Y": r"(?P<Y>\d{4})", "m": r"(?P<m>\d{1,2})", "d": r"(?P<d>\d{1,2})",
    "H": r"(?P<H>\d{1,2})", "M": r"(?P<M>\d{1,2})", "S": r"(?P<S>\d{1,2})",
    "L": r"(?P<L>\d{1,3})", "j": r"(?P<j>\d{1,3})", "G": r"(?P<G>\d{4})",
    "V": r"(?P<V>\d{1,2})", "u": r"(?P<u>\d)", "z": r"(?P<z>[+-]\d{2}:?\d{2})",
    "Z": r"(?P<Z>[+-]\d+)", "%": "%",
}


def _parse_with_format(text: str, fmt: str) -> tuple[datetime.datetime, datetime.tzinfo | None]:
    pattern = []
    position = 0
    while position < len(fmt):
        char = fmt[position]
        if char == "%":
            spec = fmt[position + 1: position + 2]
            if spec not in _FORMAT_PARTS:
                raise OperationFailure(f"Invalid format character '%{spec}' in format string",
                                       code=ErrorCode.Location18536)
            pattern.append(_FORMAT_PARTS[spec])
            position += 2
        else:
            pattern.append(re.escape(char))
            position += 1
    found = re.fullmatch("".join(pattern), text)
    if found is None:
        raise ValueError(f"'{text}' does not match the format '{fmt}'")
    parts = {k: v for k, v in found.groupdict().items() if v is not None}
    if "G" in parts:
        day = datetime.datetime.fromisocalendar(int(parts["G"]), int(parts.get("V", 1)),
                                                int(parts.get("u", 1)))
    elif "j" in parts:
        day = datetime.datetime(int(parts.get("Y", 1970)), 1, 1) + datetime.timedelta(
            days=int(parts["j"]) - 1)
    else:
        day = datetime.datetime(int(parts.get("Y", 1970)), int(parts.get("m", 1)),
                                int(parts.get("d", 1)))
    local = day.replace(hour=int(parts.get("H", 0)), minute=int(parts.get("M", 0)),
                        second=int(parts.get("S", 0)),
                        microsecond=int(parts.get("L", "0").ljust(3, "0")) * 1000)
    zone: datetime.tzinfo | None = None
    if "z" in parts:
        zone = time_zone(parts["z"])
    elif "Z" in parts:
        zone = datetime.timezone(datetime.timedelta(minutes=int(parts["Z"])))
    return local, zone


def _parse_iso(text: str) -> tuple[datetime.datetime, datetime.tzinfo | None]:
    parsed = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z")
                                             else text)
    return parsed.replace(tzinfo=None), parsed.tzinfo


def _date_from_string(parser: Any, operand: Any) -> Any:
    spec = _spec(operand, "$dateFromString", ("dateString",),
                 frozenset({"dateString", "format", "timezone", "onError", "onNull"}))
    text = parser.parse(spec["dateString"])
    fmt = parser.parse(spec["format"]) if "format" in spec else None
    zone_value = parser.parse(spec["timezone"]) if "timezone" in spec else None
    if _nullish(text):
        return parser.parse(spec["onNull"]) if "onNull" in spec else None
    if "format" in spec and _nullish(fmt):
        return None
    if fmt is not None and not isinstance(fmt, str):
        raise OperationFailure("$dateFromString requires that 'format' be a string",
                               code=ErrorCode.Location40684)
    try:
        if not isinstance(text, str):
            raise ValueError(f"$dateFromString requires that 'dateString' be a string, found: "
                             f"{bson_type_name(text)}")
        local, zone = _parse_with_format(text, fmt) if fmt else _parse_iso(text)
    except ValueError as exc:
        if "onError" in spec:
            return parser.parse(spec["onError"])
        raise OperationFailure(f"Error parsing date string '{text}'; {exc}",
                               code=ErrorCode.ConversionFailure) from exc
    return _utc(local, zone if zone is not None else time_zone(zone_value))


def date_string(date: datetime.datetime) -> str:
    """A date as ``$toString`` writes it: ISO 8601 in UTC with milliseconds."""
    if date.tzinfo is not None:
        date = date.astimezone(datetime.UTC).replace(tzinfo=None)
    return date.strftime("%Y-%m-%dT%H:%M:%S.") + f"{date.microsecond // 1000:03d}Z"


#: The date arithmetic operators this module implements, by name.
HANDLERS: dict[str, Callable[[Any, Any], Any]] = {
    "$dateAdd": _date_add("$dateAdd", 1),
    "$dateSubtract": _date_add("$dateSubtract", -1),
    "$dateDiff": _date_diff,
    "$dateTrunc": _date_trunc,
    "$dateFromParts": _date_from_parts,
    "$dateFromString": _date_from_string,
}
