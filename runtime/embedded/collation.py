"""Collations: parsing a collation document as mongod 7.0 does, and applying it.

A :class:`Collation` maps every string to a key (:mod:`runtime.embedded.collation_keys`) whose
plain order is the collated order, so the rest of the server applies a collation by comparing
*transformed* values instead of changing how it compares: a filter matches when the engine
matches the transformed filter against the transformed document, a sort orders transformed
values, and an index with a ``collation`` stores transformed keys (so a unique index with
strength 2 refuses "A" after "a"). Field names are never transformed, only values.

As in MongoDB, ``$regex`` (and regexes inside ``$in``) ignore the collation: such conditions
are evaluated against the original document (:class:`CollatedFilter`). So are ``$expr``,
``$where``, ``$text``, ``$jsonSchema`` and geo operators, and an ``$elemMatch``/``$all`` that
holds one of them: inside those, strings compare by simple binary comparison (a documented
limit; MongoDB would apply the collation to ``$expr`` comparisons).

``None`` stands for the simple (binary) collation everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from bson import Regex

from runtime.embedded import engine
from runtime.embedded.collation_keys import KeyOptions, collation_key
from runtime.embedded.errors import CommandError, ErrorCode

#: The ICU version MongoDB 7.0 links; a collation's ``version`` must equal it.
ICU_VERSION = "57.1"



def _words(text: str) -> list[str]:
    return text.split()


# Locales MongoDB 7.0 accepts (manual: "Collation Locales and Default Parameters").
_BASE_LOCALES = _words(
    "af sq am ar hy as az be bn bs bs_Cyrl bg my ca chr zh zh_Hant hr cs da nl dz en en_US "
    "en_US_POSIX eo et ee fo fil fi fr fr_CA gl ka de de_AT el gu ha haw he hi hu is ig smn id "
    "ga it ja kl kn kk km kok ko ky lkt lo lv ln lt dsb lb mk ms ml mt mr mn ne se nb nn or om "
    "ps fa fa_AF pl pt pa ro ru sr sr_Latn si sk sl es sw sv ta te th bo to tr uk hsb ur ug vi "
    "wae cy yi yo zu")
_VARIANTS = {
    "ar": "compat", "az": "search", "bn": "traditional", "bs": "search", "ca": "search",
    "zh": "big5han gb2312han unihan zhuyin", "hr": "search", "cs": "search", "da": "search",
    "fo": "search", "fi": "search traditional", "gl": "search", "de": "search phonebook eor",
    "de_AT": "phonebook", "he": "search", "is": "search", "smn": "search", "ja": "unihan",
    "kl": "search", "kn": "traditional", "ko": "search searchjl unihan", "ln": "phonetic",
    "se": "search", "nb": "search", "nn": "search", "sr_Latn": "search", "si": "dictionary",
    "sk": "search", "es": "search traditional", "sv": "search", "tr": "search",
    "vi": "traditional", "yi": "search",
}
LOCALES = frozenset(_BASE_LOCALES) | {f"{base}@collation={variant}"
                                      for base, variants in _VARIANTS.items()
                                      for variant in variants.split()}
# Per-locale defaults that differ from the root's (same manual page).
_UPPER_FIRST = frozenset({"da", "mt"})
_NORMALIZED = frozenset(_words(
    "as bn bn@collation=traditional my el gu he hi ig kn kn@collation=traditional km kok mr or "
    "ps fa fa_AF pa si si@collation=dictionary ta te th vi vi@collation=traditional yi "
    "yo"))

_FIELDS = ("locale", "caseLevel", "caseFirst", "strength", "numericOrdering", "alternate",
           "maxVariable", "normalization", "backwards", "version")


def _show(value: Any) -> str:
    """A value the way mongod prints BSON in messages (``{ locale: "x", strength: 2 }``)."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if value is None:
        return "null"
    return str(value)


def _type_name(value: Any) -> str:
    return engine.bson_type_name(value)


@dataclass(frozen=True)
class Collation:
    """A parsed, complete (non-simple) collation specification."""

    locale: str
    caseLevel: bool
    caseFirst: str
    strength: int
    numericOrdering: bool
    alternate: str
    maxVariable: str
    normalization: bool
    backwards: bool

    def to_document(self) -> dict[str, Any]:
        """The full specification as mongod reports it (listIndexes, listCollections)."""
        return {"locale": self.locale, "caseLevel": self.caseLevel, "caseFirst": self.caseFirst,
                "strength": self.strength, "numericOrdering": self.numericOrdering,
                "alternate": self.alternate, "maxVariable": self.maxVariable,
                "normalization": self.normalization, "backwards": self.backwards,
                "version": ICU_VERSION}

    @cached_property
    def _options(self) -> KeyOptions:
        language = self.locale.split("@")[0].split("_")[0]
        tailoring = "de@collation=phonebook" if self.locale.startswith("de") and \
            self.locale.endswith("phonebook") else language
        return KeyOptions(tailoring, self.strength, self.caseLevel, self.caseFirst,
                          self.numericOrdering, self.alternate == "shifted", self.maxVariable,
                          self.backwards)

    def key(self, text: str) -> str:
        """The collation key of one string."""
        return collation_key(text, self._options)

    def transform(self, value: Any) -> Any:
        """``value`` with every string (inside documents and arrays too) replaced by its key."""
        return transform(value, self.key)


def transform(value: Any, key: Callable[[str], str]) -> Any:
    """Replace every string value (not field names) in ``value`` by ``key(string)``."""
    kind = type(value)
    if kind is str:
        return key(value)
    if kind is dict:
        return {k: transform(v, key) for k, v in value.items()}
    if kind is list:
        return [transform(v, key) for v in value]
    return value


def _boolean(spec: dict[str, Any], name: str, default: bool) -> bool:
    if name not in spec:
        return default
    value = spec[name]
    if not isinstance(value, bool):
        raise CommandError(ErrorCode.TypeMismatch, f'"{name}" had the wrong type. Expected bool, '
                           f"found {_type_name(value)}")
    return value


def _choice(spec: dict[str, Any], name: str, default: str, allowed: tuple[str, ...]) -> str:
    if name not in spec:
        return default
    value = spec[name]
    if type(value) is not str:
        raise CommandError(ErrorCode.TypeMismatch, f'"{name}" had the wrong type. Expected '
                           f"string, found {_type_name(value)}")
    if value not in allowed:
        quoted = [f"'{a}'" for a in allowed]
        listed = " or ".join(quoted) if len(quoted) == 2 else \
            ", ".join(quoted[:-1]) + ", or " + quoted[-1]
        raise CommandError(ErrorCode.FailedToParse,
                           f"Field '{name}' must be {listed}. Got: {value}")
    return value


def _strength(spec: dict[str, Any]) -> int:
    if "strength" not in spec:
        return 3
    value = spec["strength"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(ErrorCode.TypeMismatch, 'Expected field "strength" to have numeric '
                           f"type, but found {_type_name(value)}")
    if value != value or value != int(value):
        raise CommandError(ErrorCode.BadValue, 'Expected field "strength" to have a value '
                           f"exactly representable as a 64-bit integer, but found strength: "
                           f"{value}")
    if int(value) not in (1, 2, 3, 4, 5):
        raise CommandError(ErrorCode.FailedToParse,
                           f"Field 'strength' must be an integer 1 through 5. Got: {int(value)}")
    return int(value)


def _check_locale(spec: dict[str, Any]) -> str:
    if "locale" not in spec:
        raise CommandError(ErrorCode.NoSuchKey, 'Missing expected field "locale"')
    locale = spec["locale"]
    if type(locale) is not str:
        raise CommandError(ErrorCode.TypeMismatch, '"locale" had the wrong type. Expected '
                           f"string, found {_type_name(locale)}")
    if "\x00" in locale:
        raise CommandError(ErrorCode.BadValue, "Field 'locale' cannot contain null byte. "
                           f"Collation spec: {_show(spec)}")
    return locale


def _suggestion(locale: str) -> str | None:
    """The locale ICU would have used instead of an unsupported one, if any."""
    canonical = locale.replace("-", "_")
    for known in LOCALES:
        if known.lower() == canonical.lower():
            return known
    language = canonical.split("@")[0].split("_")[0].lower()
    return language if language in LOCALES else None


def parse(spec: Any) -> Collation | None:
    """Validate a collation document as mongod 7.0 does; ``None`` for the simple collation.

    Codes and messages follow mongod's collator factory: NoSuchKey (4) without ``locale``,
    TypeMismatch (14) for wrongly typed fields, FailedToParse (9) for unknown fields or values,
    BadValue (2) for an unsupported locale or a contradictory combination,
    IncompatibleCollationVersion (161) for a ``version`` other than ICU 57.1's.
    """
    if not isinstance(spec, dict):
        raise CommandError(ErrorCode.TypeMismatch, "collation must be an object, found "
                           f"{_type_name(spec)}")
    locale = _check_locale(spec)
    if locale == "simple":
        if len(spec) > 1:
            raise CommandError(ErrorCode.FailedToParse, "If locale=simple, no other fields "
                               f"should be present in: {_show(spec)}")
        return None
    if not locale:
        raise CommandError(ErrorCode.BadValue, "Field 'locale' cannot be the empty string in: "
                           f"{_show(spec)}")
    if locale not in LOCALES:
        message = f"Field 'locale' is invalid in: {_show(spec)}"
        suggestion = _suggestion(locale)
        if suggestion is not None:
            message += f". Did you mean '{suggestion}'?"
        raise CommandError(ErrorCode.BadValue, message)
    case_level = _boolean(spec, "caseLevel", False)
    case_first = _choice(spec, "caseFirst", "upper" if locale in _UPPER_FIRST else "off",
                         ("upper", "lower", "off"))
    strength = _strength(spec)
    numeric = _boolean(spec, "numericOrdering", False)
    alternate = _choice(spec, "alternate", "shifted" if locale == "th" else "non-ignorable",
                        ("non-ignorable", "shifted"))
    max_variable = _choice(spec, "maxVariable", "punct", ("punct", "space"))
    normalization = _boolean(spec, "normalization", locale in _NORMALIZED or
                             locale.endswith(("@collation=search", "@collation=searchjl")))
    backwards = _boolean(spec, "backwards", locale == "fr_CA")
    if "version" in spec:
        version = spec["version"]
        if type(version) is not str:
            raise CommandError(ErrorCode.TypeMismatch, '"version" had the wrong type. '
                               f"Expected string, found {_type_name(version)}")
        if version != ICU_VERSION:
            raise CommandError(ErrorCode.IncompatibleCollationVersion,
                               f"Requested collation version {version} but the only available "
                               f"collator version was {ICU_VERSION}. Requested collation spec: "
                               f"{_show(spec)}")
    if any(name not in _FIELDS for name in spec):
        raise CommandError(ErrorCode.FailedToParse,
                           f"Collation spec contains unknown field. Collation spec: {_show(spec)}")
    collation = Collation(locale, case_level, case_first, strength, numeric, alternate,
                          max_variable, normalization, backwards)
    full = _show(collation.to_document())
    if backwards and strength == 1:
        raise CommandError(ErrorCode.BadValue,
                           f"'backwards' is invalid with 'strength' of 1 in: {full}")
    if case_first != "off" and not case_level and strength <= 2:
        raise CommandError(ErrorCode.BadValue, "'caseFirst' is invalid unless 'caseLevel' is on "
                           f"or 'strength' is greater than 2 in: {full}")
    return collation


def given(spec: Any) -> bool:
    """Whether a command names a collation (an absent or empty one means "the default")."""
    return spec is not None and spec != {}


def resolve(spec: Any, default: Any) -> Collation | None:
    """The collation a command uses: its own ``spec`` if given, else the collection's default
    (a stored ``collation`` option; ``None`` when the collection has none)."""
    if given(spec):
        return parse(spec)
    if isinstance(default, dict) and default:
        return parse({k: v for k, v in default.items() if k != "version"})
    return None


# -- filters ----------------------------------------------------------------------------------

_TRANSFORMED_OPS = frozenset({"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$all"})
# Operators whose operand is no string to compare: kept as is (the transformed document gives
# the same answer, strings staying strings).
_NEUTRAL_OPS = frozenset({"$exists", "$type", "$size", "$mod", "$bitsAllSet", "$bitsAnySet",
                          "$bitsAllClear", "$bitsAnyClear"})
_LOGICAL = ("$and", "$or", "$nor")
Node = tuple[str, Any]


class _NeedsRaw(Exception):
    """A condition that must see the original strings (a regex, ``$expr``...)."""


def _is_regex(value: Any) -> bool:
    return isinstance(value, Regex | re.Pattern)


def _is_operator_doc(cond: Any) -> bool:
    return isinstance(cond, dict) and bool(cond) and next(iter(cond)).startswith("$")


def _query(query: dict[str, Any], key: Callable[[str], str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in query.items():
        if name in _LOGICAL and isinstance(value, list):
            out[name] = [_query(q, key) if isinstance(q, dict) else q for q in value]
        elif name == "$comment":
            out[name] = value
        elif name.startswith("$"):
            raise _NeedsRaw
        else:
            out[name] = _condition(value, key)
    return out


def _condition(cond: Any, key: Callable[[str], str]) -> Any:
    if _is_regex(cond):
        raise _NeedsRaw
    if not _is_operator_doc(cond):
        return transform(cond, key)
    out: dict[str, Any] = {}
    for op, operand in cond.items():
        if op in _TRANSFORMED_OPS:
            if isinstance(operand, list) and op != "$eq" and any(
                    _is_regex(v) or (isinstance(v, dict) and "$elemMatch" in v)
                    for v in operand):
                raise _NeedsRaw
            out[op] = transform(operand, key)
        elif op == "$not":
            out[op] = _condition(operand, key)
        elif op == "$elemMatch" and isinstance(operand, dict):
            out[op] = _condition(operand, key) if _is_operator_doc(operand) else \
                _query(operand, key)
        elif op in _NEUTRAL_OPS:
            out[op] = operand
        else:
            raise _NeedsRaw
    return out


def _split(query: dict[str, Any], key: Callable[[str], str]) -> Node:
    """A tree of the filter's parts: ``coll`` (transformed filter), ``raw`` (original filter),
    ``and``/``or``/``nor``/``not`` of parts."""
    try:
        return ("coll", _query(query, key))
    except _NeedsRaw:
        pass
    parts: list[Node] = []
    for name, value in query.items():
        if name in _LOGICAL and isinstance(value, list) and all(isinstance(q, dict)
                                                                for q in value):
            parts.append((name[1:], [_split(q, key) for q in value]))
        elif name.startswith("$"):
            parts.append(("raw", {name: value}))
        else:
            parts.append(_split_condition(name, value, key))
    return ("and", parts)


def _split_condition(path: str, cond: Any, key: Callable[[str], str]) -> Node:
    try:
        return ("coll", {path: _condition(cond, key)})
    except _NeedsRaw:
        pass
    if not _is_operator_doc(cond):
        return ("raw", {path: cond})
    parts: list[Node] = []
    pattern = {op: v for op, v in cond.items() if op in ("$regex", "$options")}
    if pattern:
        parts.append(("raw", {path: pattern}))
    for op, operand in cond.items():
        if op in ("$regex", "$options"):
            continue
        if op == "$not":
            parts.append(("not", [_split_condition(path, operand, key)]))
        elif op in ("$in", "$nin") and isinstance(operand, list):
            patterns = [v for v in operand if _is_regex(v)]
            plain = [v for v in operand if not _is_regex(v)]
            node: Node = ("or", [("coll", {path: {"$in": transform(plain, key)}}),
                                 ("raw", {path: {"$in": patterns}})])
            parts.append(node if op == "$in" else ("not", [node]))
        else:
            try:
                parts.append(("coll", {path: _condition({op: operand}, key)}))
            except _NeedsRaw:
                parts.append(("raw", {path: {op: operand}}))
    return ("and", parts)


class CollatedFilter:
    """A filter under a collation: :meth:`matches` answers like MongoDB, :attr:`bounds_query`
    is a (transformed) filter whose index bounds hold every match."""

    def __init__(self, query: dict[str, Any], collation: Collation | None) -> None:
        self.query = query
        self.collation = collation
        self._tree: Node | None = None
        self.bounds_query = query
        if collation is None:
            return
        tree = _split(query, collation.key)
        if tree[0] == "coll":
            self.bounds_query = tree[1]
        else:
            self._tree = tree
            self.bounds_query = {"$and": [body for kind, body in tree[1] if kind == "coll"]}

    def matches(self, doc: dict[str, Any], variables: dict[str, Any]) -> bool:
        """Whether ``doc`` matches the filter under the collation."""
        collation = self.collation
        if collation is None:
            return engine.matches(self.query, doc, variables)
        if self._tree is None:
            return engine.matches(self.bounds_query, collation.transform(doc), variables)
        transformed: list[dict[str, Any]] = []

        def collated() -> dict[str, Any]:
            if not transformed:
                transformed.append(collation.transform(doc))
            return transformed[0]

        return _evaluate(self._tree, doc, collated, variables)


def _evaluate(node: Node, doc: dict[str, Any], collated: Callable[[], dict[str, Any]],
              variables: dict[str, Any]) -> bool:
    kind, body = node
    if kind == "coll":
        return engine.matches(body, collated(), variables)
    if kind == "raw":
        return engine.matches(body, doc, variables)
    results = (_evaluate(child, doc, collated, variables) for child in body)
    if kind == "and":
        return all(results)
    if kind == "or":
        return any(results)
    return not any(results)  # nor, not


def leading_sort(stages: list[dict[str, Any]]) -> tuple[list[tuple[str, int]] | None,
                                                        list[dict[str, Any]]]:
    """A pipeline's first stage if it is a plain ``$sort`` (as a sort list), and the rest.

    The aggregate command sorts (and ``$match``-es) the documents it reads under the command's
    collation itself; later stages run in the pipeline engine, which compares strings by simple
    binary comparison (a documented limit: ``$group``, ``$lookup`` and a ``$sort`` after other
    stages ignore the collation)."""
    if stages and isinstance(stages[0].get("$sort"), dict) and stages[0]["$sort"] and all(
            type(d) is int and d in (1, -1) for d in stages[0]["$sort"].values()):
        return list(stages[0]["$sort"].items()), stages[1:]
    return None, stages
