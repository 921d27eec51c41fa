"""The MongoDB 7.0 aggregation expression operators, ``$group`` accumulators and the query
operators ``$sampleRate`` and ``$bits*``, through PyMongo.

Each test cites the manual page of the operators it pins (``/reference/operator/aggregation/
<name>/``). One test checks the engine's exported list of supported expressions against the
server: every listed operator is recognised; an unlisted one is refused with
InvalidPipelineOperator (168).

Valid against a real MongoDB 7.0 replica set as well as the embedded server (except the tests
marked ``embedded_only``, which read the embedded engine's list).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, Timestamp
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

Db = Database[dict[str, Any]]
Coll = Collection[dict[str, Any]]


@pytest.fixture
def one(db: Db) -> Coll:
    """A collection of one document with fields of many BSON types."""
    db.one.insert_one({
        "_id": 1, "a.b": 1, "a": {"b": 2}, "arr": [3, 1, None, 2], "s": "héllo wörld",
        "d": datetime.datetime(2024, 12, 30, 10, 30, 15, 250000), "ts": Timestamp(1700000000, 7),
        "bin": Binary(b"\x00\x01\x02\x03"),
        "people": [{"n": "b", "age": 30}, {"n": "a", "age": 25}],
    })
    return db.one


def project(coll: Coll, **fields: Any) -> dict[str, Any]:
    """The single document of ``coll`` projected to ``fields`` (without ``_id``)."""
    [doc] = coll.aggregate([{"$project": {"_id": 0, **fields}}])
    return doc


def test_get_field_full_form(one: Coll) -> None:
    """$getField (5.0): a field whose name has a dot or starts with ``$`` (via ``$literal``),
    the ``{field, input}`` form, a missing field and a non-object input give no field."""
    out = project(
        one,
        dotted={"$getField": "a.b"},
        nested={"$getField": {"field": "b", "input": "$a"}},
        dollar={"$getField": {"field": {"$literal": "$price"},
                              "input": {"$literal": {"$price": 5}}}},
        absent={"$getField": "nope"},
        not_object={"$getField": {"field": "x", "input": "$s"}},
    )
    assert out == {"dotted": 1, "nested": 2, "dollar": 5}


def test_set_field_and_unset_field(one: Coll) -> None:
    """$setField / $unsetField (5.0): add or replace a field (dotted and ``$`` names too),
    remove one with ``$$REMOVE`` or $unsetField; a null input gives null."""
    out = project(
        one,
        added={"$setField": {"field": "c", "input": "$a", "value": 9}},
        replaced={"$setField": {"field": "b", "input": "$a", "value": "x"}},
        dollar={"$setField": {"field": {"$literal": "$p"}, "input": {}, "value": 1}},
        dotted={"$setField": {"field": "x.y", "input": {}, "value": 1}},
        removed={"$setField": {"field": "b", "input": "$a", "value": "$$REMOVE"}},
        unset={"$unsetField": {"field": "b", "input": "$a"}},
        null={"$setField": {"field": "b", "input": None, "value": 1}},
    )
    assert out == {"added": {"b": 2, "c": 9}, "replaced": {"b": "x"}, "dollar": {"$p": 1},
                   "dotted": {"x.y": 1}, "removed": {}, "unset": {}, "null": None}


def test_rand_is_a_fresh_double_in_unit_interval(db: Db) -> None:
    """$rand (4.4.2): a double in [0, 1), drawn anew for each document."""
    db.many.insert_many([{"_id": i} for i in range(50)])
    draws = [d["r"] for d in db.many.aggregate([{"$project": {"r": {"$rand": {}}}}])]
    assert all(isinstance(r, float) and 0 <= r < 1 for r in draws)
    assert len(set(draws)) > 40


def test_sample_rate_bounds_and_errors(db: Db) -> None:
    """$sampleRate (4.4.2): 0 keeps nothing, 1 keeps everything, in find and $match; a
    non-number or a number outside [0, 1] is BadValue (2)."""
    db.many.insert_many([{"_id": i} for i in range(20)])
    assert list(db.many.find({"$sampleRate": 0})) == []
    assert len(list(db.many.find({"$sampleRate": 1.0}))) == 20
    assert len(list(db.many.aggregate([{"$match": {"$sampleRate": 1}}]))) == 20
    assert len(list(db.many.find({"$sampleRate": 0.5}))) <= 20
    for bad in (1.5, -0.1, "half", None):
        with pytest.raises(OperationFailure) as caught:
            list(db.many.find({"$sampleRate": bad}))
        assert caught.value.code == 2, bad


def test_n_array_operators(one: Coll) -> None:
    """$firstN / $lastN / $maxN / $minN array forms (5.2): maxN/minN skip null and order
    largest/smallest first."""
    out = project(
        one,
        first={"$firstN": {"n": 2, "input": "$arr"}},
        last={"$lastN": {"n": 2, "input": "$arr"}},
        max={"$maxN": {"n": 2, "input": "$arr"}},
        min={"$minN": {"n": 5, "input": "$arr"}},
    )
    assert out == {"first": [3, 1], "last": [None, 2], "max": [3, 2], "min": [1, 2, 3]}


def test_sort_array(one: Coll) -> None:
    """$sortArray (5.2): scalars by 1/-1, documents by a sort document."""
    out = project(
        one,
        up={"$sortArray": {"input": [3, 1, 2], "sortBy": 1}},
        down={"$sortArray": {"input": [3, 1, 2], "sortBy": -1}},
        docs={"$sortArray": {"input": "$people", "sortBy": {"age": 1}}},
    )
    assert out == {"up": [1, 2, 3], "down": [3, 2, 1],
                   "docs": [{"n": "a", "age": 25}, {"n": "b", "age": 30}]}


def test_range_reverse_zip_array_to_object(one: Coll) -> None:
    """$range, $reverseArray, $zip (with useLongestLength and defaults), $arrayToObject."""
    out = project(
        one,
        range={"$range": [0, 10, 3]},
        down={"$range": [5, 0, -2]},
        reversed={"$reverseArray": [[1, 2, 3]]},
        zipped={"$zip": {"inputs": [[1, 2, 3], ["a", "b"]]}},
        longest={"$zip": {"inputs": [[1, 2, 3], ["a"]], "useLongestLength": True,
                          "defaults": [0, "z"]}},
        pairs={"$arrayToObject": [[["k", 1], ["j", 2]]]},
        kv={"$arrayToObject": [[{"k": "x", "v": True}]]},
    )
    assert out == {"range": [0, 3, 6, 9], "down": [5, 3, 1], "reversed": [3, 2, 1],
                   "zipped": [[1, "a"], [2, "b"]],
                   "longest": [[1, "a"], [2, "z"], [3, "z"]],
                   "pairs": {"k": 1, "j": 2}, "kv": {"x": True}}


def test_date_parts_and_iso_weeks(one: Coll) -> None:
    """$dateToParts (plain and iso8601), $isoWeek, $isoWeekYear, $isoDayOfWeek: 2024-12-30 is
    a Monday in ISO week 1 of 2025."""
    out = project(
        one,
        parts={"$dateToParts": {"date": "$d"}},
        iso={"$dateToParts": {"date": "$d", "iso8601": True}},
        week={"$isoWeek": "$d"}, year={"$isoWeekYear": "$d"}, day={"$isoDayOfWeek": "$d"},
    )
    assert out["parts"] == {"year": 2024, "month": 12, "day": 30, "hour": 10, "minute": 30,
                            "second": 15, "millisecond": 250}
    assert out["iso"] == {"isoWeekYear": 2025, "isoWeek": 1, "isoDayOfWeek": 1, "hour": 10,
                          "minute": 30, "second": 15, "millisecond": 250}
    assert (out["week"], out["year"], out["day"]) == (1, 2025, 1)


def test_string_operators(one: Coll) -> None:
    """$replaceOne / $replaceAll (4.4), $strLenCP / $strLenBytes, $substrCP / $substrBytes,
    $indexOfCP / $indexOfBytes: code points versus UTF-8 bytes."""
    out = project(
        one,
        one_={"$replaceOne": {"input": "a-b-c", "find": "-", "replacement": "+"}},
        all_={"$replaceAll": {"input": "a-b-c", "find": "-", "replacement": "+"}},
        null={"$replaceAll": {"input": None, "find": "-", "replacement": "+"}},
        cp={"$strLenCP": "$s"}, bytes={"$strLenBytes": "$s"},
        sub_cp={"$substrCP": ["$s", 1, 4]}, sub_bytes={"$substrBytes": ["$s", 0, 3]},
        idx_cp={"$indexOfCP": ["$s", "w"]}, idx_bytes={"$indexOfBytes": ["$s", "w"]},
        idx_none={"$indexOfCP": ["$s", "zz"]},
    )
    assert out == {"one_": "a+b-c", "all_": "a+b+c", "null": None, "cp": 11, "bytes": 13,
                   "sub_cp": "éllo", "sub_bytes": "hé", "idx_cp": 6, "idx_bytes": 7,
                   "idx_none": -1}


def test_timestamp_size_and_bitwise_operators(one: Coll) -> None:
    """$tsSecond / $tsIncrement (5.1) give longs; $bsonSize and $binarySize count bytes;
    $bitAnd / $bitOr / $bitXor / $bitNot (6.3)."""
    out = project(
        one,
        sec={"$tsSecond": "$ts"}, inc={"$tsIncrement": "$ts"},
        size={"$bsonSize": {"$literal": {"a": 1}}}, bin={"$binarySize": "$bin"},
        text={"$binarySize": "$s"},
        band={"$bitAnd": [12, 10]}, bor={"$bitOr": [12, 10]}, bxor={"$bitXor": [12, 10]},
        bnot={"$bitNot": 12},
    )
    assert out == {"sec": 1700000000, "inc": 7, "size": 12, "bin": 4, "text": 13,
                   "band": 8, "bor": 14, "bxor": 6, "bnot": -13}
    assert isinstance(out["sec"], Int64) and isinstance(out["inc"], Int64)


def test_trigonometry(one: Coll) -> None:
    """$sin, $cos, $atan2, $degreesToRadians, $radiansToDegrees return doubles (a decimal for
    a decimal input); $acos outside [-1, 1] fails with 50989."""
    out = project(
        one,
        sin={"$sin": 0}, cos={"$cos": 0}, atan2={"$atan2": [1, 1]},
        rad={"$degreesToRadians": 180}, deg={"$radiansToDegrees": math.pi},
        dec={"$sin": Decimal128("0")}, null={"$sin": None},
    )
    assert (out["sin"], out["cos"], out["rad"], out["deg"]) == (0.0, 1.0, math.pi, 180.0)
    assert out["atan2"] == pytest.approx(math.pi / 4)
    assert isinstance(out["dec"], Decimal128) and out["dec"].to_decimal() == 0
    assert out["null"] is None
    with pytest.raises(OperationFailure) as caught:
        project(one, bad={"$acos": 2})
    assert caught.value.code == 50989


def test_median_and_percentile_expressions(one: Coll) -> None:
    """$median / $percentile as expressions (7.0, method "approximate"): doubles, non-numbers
    ignored, p in [0, 1]."""
    out = project(
        one,
        median={"$median": {"input": [5, 1, 3, "x"], "method": "approximate"}},
        pct={"$percentile": {"input": [1, 2, 3, 4, 5], "p": [0.2, 1.0],
                             "method": "approximate"}},
        empty={"$median": {"input": [], "method": "approximate"}},
    )
    assert out == {"median": 3.0, "pct": [1.0, 5.0], "empty": None}


def test_unknown_expression_is_invalid_pipeline_operator(one: Coll) -> None:
    """An operator MongoDB does not have is refused with InvalidPipelineOperator (168)."""
    with pytest.raises(OperationFailure) as caught:
        project(one, x={"$noSuchOperator": 1})
    assert caught.value.code == 168


@pytest.mark.embedded_only
def test_every_supported_expression_is_recognised(one: Coll) -> None:
    """Each name in ``engine.SUPPORTED_EXPRESSIONS`` is recognised by the server: whatever its
    (deliberately odd) argument does, the answer is never 168 nor InternalError (1)."""
    from runtime.embedded import engine

    assert {"$getField", "$setField", "$unsetField", "$rand", "$sortArray", "$firstN",
            "$median", "$tsSecond", "$toBool"} <= engine.SUPPORTED_EXPRESSIONS
    assert "$function" not in engine.SUPPORTED_EXPRESSIONS
    assert {"$expr", "$sampleRate", "$or", "$elemMatch"} <= engine.SUPPORTED_QUERY_OPERATORS
    assert {"$set", "$inc", "$addToSet", "$currentDate"} <= engine.SUPPORTED_UPDATE_OPERATORS
    assert {"$match", "$group", "$lookup", "$unwind"} <= engine.SUPPORTED_STAGES
    assert {"$sum", "$push", "$firstN", "$median"} <= engine.SUPPORTED_ACCUMULATORS
    for name in sorted(engine.SUPPORTED_EXPRESSIONS):
        try:
            project(one, x={name: [1]})
        except OperationFailure as exc:
            assert exc.code not in (1, 168), (name, exc.details)


def test_date_add_and_subtract_follow_the_calendar(db: Db) -> None:
    """$dateAdd / $dateSubtract (5.0): a month after January 31 is the last day of February; a
    day is a calendar day in the time zone (23 hours across New York's spring change) while 24
    hours are 24 hours; a quarter is three months."""
    db.d.insert_one({"_id": 1, "jan": datetime.datetime(2024, 1, 31, 8),
                     "dst": datetime.datetime(2024, 3, 9, 17),
                     "may": datetime.datetime(2024, 5, 31)})
    out = project(
        db.d,
        month={"$dateAdd": {"startDate": "$jan", "unit": "month", "amount": 1}},
        day={"$dateAdd": {"startDate": "$dst", "unit": "day", "amount": 1,
                          "timezone": "America/New_York"}},
        hours={"$dateAdd": {"startDate": "$dst", "unit": "hour", "amount": 24,
                            "timezone": "America/New_York"}},
        quarter={"$dateSubtract": {"startDate": "$may", "unit": "quarter", "amount": 1}},
        null={"$dateAdd": {"startDate": None, "unit": "day", "amount": 1}},
    )
    assert out == {"month": datetime.datetime(2024, 2, 29, 8),
                   "day": datetime.datetime(2024, 3, 10, 16),
                   "hours": datetime.datetime(2024, 3, 10, 17),
                   "quarter": datetime.datetime(2024, 2, 29), "null": None}


def test_date_diff_counts_boundaries(db: Db) -> None:
    """$dateDiff (5.0) counts unit boundaries crossed, in the time zone's wall clock; weeks
    start on ``startOfWeek`` (Sunday by default). Results are longs."""
    db.d.insert_one({"_id": 1, "a": datetime.datetime(2024, 12, 31, 23),
                     "b": datetime.datetime(2025, 1, 1, 1),
                     "sun": datetime.datetime(2024, 3, 17), "mon": datetime.datetime(2024, 3, 18)})
    out = project(
        db.d,
        year={"$dateDiff": {"startDate": "$a", "endDate": "$b", "unit": "year"}},
        day={"$dateDiff": {"startDate": "$a", "endDate": "$b", "unit": "day"}},
        hour={"$dateDiff": {"startDate": "$a", "endDate": "$b", "unit": "hour"}},
        local={"$dateDiff": {"startDate": "$a", "endDate": "$b", "unit": "day",
                             "timezone": "+05:00"}},
        week_sun={"$dateDiff": {"startDate": "$sun", "endDate": "$mon", "unit": "week"}},
        week_mon={"$dateDiff": {"startDate": "$sun", "endDate": "$mon", "unit": "week",
                                "startOfWeek": "monday"}},
        back={"$dateDiff": {"startDate": "$b", "endDate": "$a", "unit": "month"}},
    )
    assert out == {"year": 1, "day": 1, "hour": 2, "local": 0, "week_sun": 0, "week_mon": 1,
                   "back": -1}
    assert isinstance(out["hour"], Int64)


def test_date_trunc_bins(db: Db) -> None:
    """$dateTrunc (5.0): bins of ``binSize`` units counted from 2000-01-01, weeks from
    ``startOfWeek``, days in the time zone's wall clock."""
    db.d.insert_one({"_id": 1, "d": datetime.datetime(2024, 5, 20, 10, 47, 30),
                     "late": datetime.datetime(2024, 3, 15, 3)})
    out = project(
        db.d,
        quarter={"$dateTrunc": {"date": "$d", "unit": "month", "binSize": 3}},
        hour={"$dateTrunc": {"date": "$d", "unit": "hour"}},
        minutes={"$dateTrunc": {"date": "$d", "unit": "minute", "binSize": 15}},
        week={"$dateTrunc": {"date": "$d", "unit": "week", "startOfWeek": "monday"}},
        day={"$dateTrunc": {"date": "$late", "unit": "day", "timezone": "America/New_York"}},
    )
    assert out == {"quarter": datetime.datetime(2024, 4, 1),
                   "hour": datetime.datetime(2024, 5, 20, 10),
                   "minutes": datetime.datetime(2024, 5, 20, 10, 45),
                   "week": datetime.datetime(2024, 5, 20),
                   "day": datetime.datetime(2024, 3, 14, 4)}


def test_date_from_parts_and_parts_in_time_zones(db: Db) -> None:
    """$dateFromParts carries out-of-range parts (month 14, day 0), takes ISO week dates and a
    time zone; $hour / $dayOfMonth accept ``{date, timezone}``; a null date gives null."""
    db.d.insert_one({"_id": 1, "d": datetime.datetime(2024, 3, 15, 23, 30)})
    out = project(
        db.d,
        carried={"$dateFromParts": {"year": 2024, "month": 14, "day": 1}},
        day_zero={"$dateFromParts": {"year": 2024, "month": 3, "day": 0}},
        tokyo={"$dateFromParts": {"year": 2024, "month": 1, "day": 1, "hour": 9,
                                  "timezone": "Asia/Tokyo"}},
        iso={"$dateFromParts": {"isoWeekYear": 2025, "isoWeek": 1, "isoDayOfWeek": 1}},
        hour={"$hour": {"date": "$d", "timezone": "+05:30"}},
        day={"$dayOfMonth": {"date": "$d", "timezone": "+05:30"}},
        null={"$year": None},
    )
    assert out == {"carried": datetime.datetime(2025, 2, 1),
                   "day_zero": datetime.datetime(2024, 2, 29),
                   "tokyo": datetime.datetime(2024, 1, 1),
                   "iso": datetime.datetime(2024, 12, 30), "hour": 5, "day": 16, "null": None}


def test_to_string_switch_size_sqrt(one: Coll) -> None:
    """$toString of a date is ISO 8601 with milliseconds, of a boolean "true"; $switch without
    a matching branch or default fails with 40066, $size of a non-array with 17124, $sqrt of a
    negative number with 28714."""
    out = project(one, date={"$toString": "$d"}, flag={"$toString": True},
                  root={"$sqrt": 16})
    assert out == {"date": "2024-12-30T10:30:15.250Z", "flag": "true", "root": 4.0}
    for expression, code in (
        ({"$switch": {"branches": [{"case": {"$eq": [1, 2]}, "then": 1}]}}, 40066),
        ({"$size": "$nothing"}, 17124),
        ({"$sqrt": -1}, 28714),
    ):
        with pytest.raises(OperationFailure) as caught:
            project(one, x=expression)
        assert caught.value.code == code, expression


def test_bit_query_operators(db: Db) -> None:
    """$bitsAllSet / $bitsAnySet / $bitsAllClear / $bitsAnyClear (query operators): a mask as
    bit positions, a number or BinData; only integral numbers and BinData can match; a
    negative mask is BadValue (2)."""
    db.bits.insert_many([{"_id": 54, "a": 54}, {"_id": 20, "a": 20}, {"_id": 102, "a": 102},
                         {"_id": "bin", "a": Binary(b"\x20")}, {"_id": "str", "a": "x"},
                         {"_id": "frac", "a": 3.5}, {"_id": "arr", "a": [1, 20]}])

    def found(query: dict[str, Any]) -> list[str]:
        return sorted(str(d["_id"]) for d in db.bits.find({"a": query}))

    assert found({"$bitsAllSet": [1, 5]}) == ["102", "54"]
    assert found({"$bitsAnySet": 35}) == ["102", "54", "arr", "bin"]
    assert found({"$bitsAllClear": [1, 5]}) == ["20", "arr"]
    assert found({"$bitsAnyClear": Binary(b"\x22")}) == ["20", "arr", "bin"]
    with pytest.raises(OperationFailure) as caught:
        found({"$bitsAllSet": -1})
    assert caught.value.code == 2


def test_n_and_percentile_accumulators_in_group(db: Db) -> None:
    """$group accumulators $firstN / $lastN / $maxN / $minN (5.2; $lastN keeps a missing input
    as null, $maxN/$minN skip it) and $median / $percentile (7.0, "approximate")."""
    db.g.insert_many([{"_id": i, "g": "a", "x": x} for i, x in enumerate([5, 1, 4, 2, 3])])
    db.g.insert_one({"_id": 9, "g": "a"})
    [doc] = db.g.aggregate([{"$sort": {"_id": 1}}, {"$group": {
        "_id": "$g",
        "first": {"$firstN": {"input": "$x", "n": 2}},
        "last": {"$lastN": {"input": "$x", "n": 2}},
        "max": {"$maxN": {"input": "$x", "n": 2}},
        "min": {"$minN": {"input": "$x", "n": 2}},
        "median": {"$median": {"input": "$x", "method": "approximate"}},
        "pct": {"$percentile": {"input": "$x", "p": [0.2, 1], "method": "approximate"}},
    }}])
    assert doc == {"_id": "a", "first": [5, 1], "last": [3, None], "max": [5, 4],
                   "min": [1, 2], "median": 3.0, "pct": [1.0, 5.0]}


def test_date_from_string_with_format(one: Coll) -> None:
    """$dateFromString with ``format``, ``timezone``, ``onError`` and ``onNull``; an
    unparsable string without ``onError`` is ConversionFailure (241)."""
    out = project(
        one,
        fmt={"$dateFromString": {"dateString": "15/03/2024 10:05", "format": "%d/%m/%Y %H:%M"}},
        iso={"$dateFromString": {"dateString": "2024-03-15T10:05:00.123Z"}},
        zone={"$dateFromString": {"dateString": "2024-03-15T10:05:00",
                                  "timezone": "America/New_York"}},
        offset={"$dateFromString": {"dateString": "2024-03-15 10:05 +0530",
                                    "format": "%Y-%m-%d %H:%M %z"}},
        error={"$dateFromString": {"dateString": "nope", "onError": "bad"}},
        null={"$dateFromString": {"dateString": None, "onNull": "none"}},
    )
    assert out == {"fmt": datetime.datetime(2024, 3, 15, 10, 5),
                   "iso": datetime.datetime(2024, 3, 15, 10, 5, 0, 123000),
                   "zone": datetime.datetime(2024, 3, 15, 14, 5),
                   "offset": datetime.datetime(2024, 3, 15, 4, 35),
                   "error": "bad", "null": "none"}
    with pytest.raises(OperationFailure) as caught:
        project(one, x={"$dateFromString": {"dateString": "nope"}})
    assert caught.value.code == 241


def test_group_sum_avg_max_min_bson_types(db: Db) -> None:
    """$group $sum / $avg add numbers only, in BSON numeric types (a decimal makes the result
    decimal; an int sum past 2^31-1 becomes a long); $max / $min compare in BSON order across
    types (a string is above every number) and skip missing values."""
    db.g.insert_many([{"_id": 1, "x": Int64(5)}, {"_id": 2, "x": Decimal128("1.5")},
                      {"_id": 3, "x": 2**31 - 1}, {"_id": 4, "x": "s"}, {"_id": 5, "x": 1},
                      {"_id": 6}])
    [doc] = db.g.aggregate([{"$group": {
        "_id": None, "sum": {"$sum": "$x"}, "avg": {"$avg": "$x"}, "max": {"$max": "$x"},
        "min": {"$min": "$x"}, "n": {"$sum": 1}}}])
    assert doc == {"_id": None, "sum": Decimal128("2147483654.5"),
                   "avg": Decimal128("536870913.625"), "max": "s", "min": 1, "n": 6}
    [ints] = db.g.aggregate([{"$match": {"_id": {"$in": [3, 5]}}},
                             {"$group": {"_id": None, "sum": {"$sum": "$x"}}},
                             {"$project": {"t": {"$type": "$sum"}, "sum": 1}}])
    assert (ints["sum"], ints["t"]) == (2**31, "long")


def test_top_and_bottom_accumulators(db: Db) -> None:
    """$top / $topN / $bottom / $bottomN (5.2): the ``output`` of the first or last documents
    of each group in ``sortBy`` order ($bottomN keeps sort order)."""
    db.g.insert_many([{"_id": i, "g": i % 2, "x": (i * 7) % 5, "name": f"n{i}"}
                      for i in range(7)])
    out = list(db.g.aggregate([{"$group": {
        "_id": "$g",
        "top": {"$top": {"sortBy": {"x": -1}, "output": "$name"}},
        "top_n": {"$topN": {"n": 2, "sortBy": {"x": 1}, "output": ["$name", "$x"]}},
        "bottom": {"$bottom": {"sortBy": {"x": 1}, "output": "$name"}},
        "bottom_n": {"$bottomN": {"n": 2, "sortBy": {"x": 1}, "output": "$x"}},
    }}, {"$sort": {"_id": 1}}]))
    assert out == [
        {"_id": 0, "top": "n2", "top_n": [["n0", 0], ["n6", 2]], "bottom": "n2",
         "bottom_n": [3, 4]},
        {"_id": 1, "top": "n1", "top_n": [["n5", 0], ["n3", 1]], "bottom": "n1",
         "bottom_n": [1, 2]},
    ]
