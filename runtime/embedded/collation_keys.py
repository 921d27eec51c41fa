"""Collation keys: strings whose plain (code point) order is a collation's order.

MongoDB compares strings under a collation with ICU 57.1. This module approximates ICU's root
collation (the Unicode Collation Algorithm with CLDR root data) with :mod:`unicodedata`, level
by level, and a few locale tailorings, so that equal keys mean "equal under the collation" and
key order is collation order. Each key lists weights per level, levels separated by ``"\\x00"``:

* primary: base characters, case-folded (``"ß"`` as ``"ss"``), compatibility forms folded
  (NFKD: ``"ﬁ"`` is ``"fi"``); groups ordered whitespace < punctuation < symbols < currency <
  digits < letters, printable ASCII in ICU's exact root order, other characters by group and
  code point; letters by code point of the base letter (Latin before Greek before Cyrillic...);
* secondary: diacritics (NFD combining marks, the common ones in UCA order), reversed with
  ``backwards``;
* case level (``caseLevel``): lower < upper (flipped with ``caseFirst: "upper"``);
* tertiary: case and compatibility variant (``"a" < "A"``, ``"ss" < "ß"``);
* quaternary (strength 4, ``alternate: "shifted"``): the ignored spaces/punctuation;
* identical (strength 5): the NFD code points.

``numericOrdering`` weighs a run of decimal digits by its value (leading zeros ignored).
``alternate: "shifted"`` makes whitespace (and with ``maxVariable: "punct"`` punctuation)
ignorable below the quaternary level.

Limits (documented, not hidden): tailorings exist only for the locales in :data:`_TAILORED`
(separate letters of sv/fi/da/nb/nn/es/tr/az/pl/cs/sk/hr/sl/is, German phonebook); every other
supported locale compares like the root collation. No contractions (Spanish traditional "ch",
Danish "aa"), no CJK reading orders (zh pinyin, ja kana equivalence), no Han radical-stroke order.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

# -- weights ----------------------------------------------------------------------------------

_GROUP = 1 << 24
_SPACE, _PUNCT, _SYMBOL, _CURRENCY, _DIGIT, _LETTER = (g * _GROUP for g in range(1, 7))
# ICU's root order of printable ASCII's non-alphanumerics (space first, then these).
_ASCII_ORDER = {
    _SPACE: "\t\n\v\f\r\x85\u2028\u2029 ",
    _PUNCT: "_-,;:!?.'\"()[]{}@*/\\&#%",
    _SYMBOL: "`^+<=>|~",
    _CURRENCY: "$",
}
_LISTED = {ch: group + i for group, chars in _ASCII_ORDER.items() for i, ch in enumerate(chars)}
# UCA secondary order of the common diacritics; other marks follow by code point.
_MARKS = "\u0301\u0300\u0306\u0302\u030c\u030a\u0308\u030b\u0303\u0307\u0338\u0327\u0328\u0304"
_MARK_WEIGHT = {m: 0x100 + i for i, m in enumerate(_MARKS)}
_STROKE = "\u0338"
_COMMON = 0x05
# Latin letters without a decomposition that UCA files under a base letter (a diacritic-like
# secondary difference) or right after one (a letter of its own).
_AS_MARKED = {"ø": "o", "đ": "d", "ł": "l", "ħ": "h", "ŧ": "t", "ƀ": "b"}
_AFTER = {"æ": ("a", 1), "ð": ("d", 1), "ŋ": ("n", 1), "œ": ("o", 1), "þ": ("z", 1),
          "\u0131": ("i", 1), "ĸ": ("q", 1)}
# Compatibility decomposition tags, in UCA tertiary order (lower rank sorts first).
_VARIANTS = ["", "<wide>", "<narrow>", "<compat>", "<font>", "<circle>", "<super>", "<sub>",
             "<small>", "<fraction>", "<square>", "<noBreak>", "<initial>", "<medial>",
             "<final>", "<isolated>", "<vertical>"]
_EXPANDED = 3  # the variant rank of one character weighed as several ("ß" as "ss")

# Letters a locale sorts as letters of their own right after a base letter (value: base, rank),
# and German phonebook expansions. Lowercase, NFC.
_TAILORED: dict[str, dict[str, tuple[str, int]]] = {
    "sv": {"å": ("z", 1), "ä": ("z", 2), "æ": ("z", 2), "ö": ("z", 3), "ø": ("z", 3)},
    "fi": {"å": ("z", 1), "ä": ("z", 2), "æ": ("z", 2), "ö": ("z", 3), "ø": ("z", 3)},
    "da": {"æ": ("z", 1), "ä": ("z", 1), "ø": ("z", 2), "ö": ("z", 2), "å": ("z", 3)},
    "nb": {"æ": ("z", 1), "ä": ("z", 1), "ø": ("z", 2), "ö": ("z", 2), "å": ("z", 3)},
    "nn": {"æ": ("z", 1), "ä": ("z", 1), "ø": ("z", 2), "ö": ("z", 2), "å": ("z", 3)},
    "is": {"á": ("a", 1), "ð": ("d", 1), "é": ("e", 1), "í": ("i", 1), "ó": ("o", 1),
           "ú": ("u", 1), "ý": ("y", 1), "þ": ("z", 1), "æ": ("z", 2), "ö": ("z", 3)},
    "es": {"ñ": ("n", 1)},
    "tr": {"ç": ("c", 1), "ğ": ("g", 1), "\u0131": ("h", 1), "ö": ("o", 1), "ş": ("s", 1),
           "ü": ("u", 1)},
    "az": {"ç": ("c", 1), "ğ": ("g", 1), "\u0131": ("h", 1), "ö": ("o", 1), "ş": ("s", 1),
           "ü": ("u", 1)},
    "pl": {"ą": ("a", 1), "ć": ("c", 1), "ę": ("e", 1), "ł": ("l", 1), "ń": ("n", 1),
           "ó": ("o", 1), "ś": ("s", 1), "ź": ("z", 1), "ż": ("z", 2)},
    "cs": {"č": ("c", 1), "ř": ("r", 1), "š": ("s", 1), "ž": ("z", 1)},
    "sk": {"ä": ("a", 1), "č": ("c", 1), "ô": ("o", 1), "ř": ("r", 1), "š": ("s", 1),
           "ž": ("z", 1)},
    "hr": {"č": ("c", 1), "ć": ("c", 2), "đ": ("d", 1), "š": ("s", 1), "ž": ("z", 1)},
    "sl": {"č": ("c", 1), "š": ("s", 1), "ž": ("z", 1)},
}
_PHONEBOOK = {"ä": "ae", "ö": "oe", "ü": "ue"}


@dataclass(frozen=True)
class KeyOptions:
    """The settings of a collation that shape its keys (see ``collation.Collation``)."""

    locale: str
    strength: int = 3
    case_level: bool = False
    case_first: str = "off"
    numeric: bool = False
    shifted: bool = False
    max_variable: str = "punct"
    backwards: bool = False


@dataclass
class _Element:
    """One collation element: its weight per level (``primary`` None = ignorable)."""

    primary: int | None
    secondary: int
    upper: bool
    variant: int
    extra: tuple[int, ...] = ()  # more primary weights (a numeric run's digits)


def _encode(weights: list[int]) -> str:
    # Two characters per weight (both in 1..0x8000), so string order is weight order.
    return "".join(chr(1 + (w >> 15)) + chr(1 + (w & 0x7FFF)) for w in weights)


def _group(ch: str) -> int | None:
    listed = _LISTED.get(ch)
    if listed is not None:
        return listed
    category = unicodedata.category(ch)
    if category in ("Zs", "Zl", "Zp"):
        return _SPACE + 0x100 + ord(ch)
    if category[0] == "P":
        return _PUNCT + 0x100 + ord(ch)
    if category == "Sc":
        return _CURRENCY + 0x100 + ord(ch)
    if category[0] == "S":
        return _SYMBOL + 0x100 + ord(ch)
    if category in ("Cc", "Cf", "Mn", "Me"):
        return None  # completely ignorable (marks are handled by the caller)
    return _LETTER + ord(ch) * 8


def _letter_weight(ch: str) -> int:
    return _LETTER + ord(ch) * 8


def _variant(ch: str) -> tuple[str, int]:
    """``ch``'s compatibility decomposition and its variant rank."""
    decomposition = unicodedata.decomposition(ch)
    if decomposition.startswith("<"):
        tag = decomposition.split(" ", 1)[0]
        rank = _VARIANTS.index(tag) if tag in _VARIANTS else len(_VARIANTS)
        return unicodedata.normalize("NFKD", ch), rank
    return ch, 0


def _base_elements(ch: str, locale: str, upper: bool) -> list[_Element]:
    """Elements of one NFD base character (no marks)."""
    folded = ch.casefold()
    if locale in ("tr", "az") and ch == "I":
        folded = "\u0131"
    tailored = _TAILORED.get(locale, {}).get(folded)
    if tailored is not None:
        return [_Element(_letter_weight(tailored[0]) + tailored[1], _COMMON, upper, 0)]
    if folded in _AS_MARKED:
        return [_Element(_letter_weight(_AS_MARKED[folded]), _COMMON, upper, 0),
                _Element(None, _MARK_WEIGHT[_STROKE], False, 0)]
    if folded in _AFTER:
        base, rank = _AFTER[folded]
        return [_Element(_letter_weight(base) + rank, _COMMON, upper, 0)]
    compat, variant = _variant(ch)
    if compat != ch:
        out: list[_Element] = []
        for part in compat:
            for element in _elements_of(part, locale):
                element.variant = max(element.variant, variant)
                out.append(element)
        return out
    if len(folded) > 1:  # "ß" -> "ss": an expansion, a tertiary variant of the plain letters
        return [_Element(_letter_weight(c), _COMMON, upper, _EXPANDED) for c in folded]
    if unicodedata.category(ch) == "Nd":
        return [_Element(_DIGIT + 0x10 + unicodedata.digit(ch), _COMMON, False, 0)]
    primary = _group(folded)
    return [] if primary is None else [_Element(primary, _COMMON, upper, 0)]


def _elements_of(text: str, locale: str) -> list[_Element]:
    """Collation elements of ``text`` (NFC), before numeric runs and shifting."""
    elements: list[_Element] = []
    for ch in text:
        turkish = locale in ("tr", "az")
        lower = "\u0131" if turkish and ch == "I" else ch.lower()
        upper = ch != lower or unicodedata.category(ch) == "Lt"
        if turkish and ch == "İ":
            elements.extend(_base_elements("i", locale, True))
            continue
        if locale in _TAILORED and lower in _TAILORED[locale]:
            elements.extend(_base_elements(ch, locale, upper))
            continue
        if locale == "de@collation=phonebook" and lower in _PHONEBOOK:
            first, second = _PHONEBOOK[lower][0], _PHONEBOOK[lower][1]
            elements.append(_Element(_letter_weight(first), _COMMON, upper, 0))
            elements.append(_Element(_letter_weight(second), _COMMON, upper, 0))
            elements.append(_Element(None, _MARK_WEIGHT["\u0308"], False, 0))
            continue
        decomposed = unicodedata.normalize("NFD", ch)
        for part in decomposed:
            if unicodedata.combining(part) or unicodedata.category(part) in ("Mn", "Me"):
                weight = _MARK_WEIGHT.get(part, 0x1000 + ord(part))
                elements.append(_Element(None, weight, False, 0))
            else:
                elements.extend(_base_elements(part, locale, upper))
    return elements


def _numeric_runs(elements: list[_Element]) -> list[_Element]:
    """Fold each run of digit elements into one weighed by its value."""
    out: list[_Element] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            digits = run[:]
            while len(digits) > 1 and digits[0] == 0:
                digits.pop(0)
            out.append(_Element(_DIGIT, _COMMON, False, 0,
                                (len(digits), *(_DIGIT + 0x10 + d for d in digits))))
            run.clear()

    for element in elements:
        p = element.primary
        if p is not None and _DIGIT + 0x10 <= p <= _DIGIT + 0x19 and not element.extra:
            run.append(p - _DIGIT - 0x10)
            continue
        flush()
        out.append(element)
    flush()
    return out


def _variable(primary: int | None, max_variable: str) -> bool:
    if primary is None:
        return False
    if primary < _PUNCT:
        return True
    return max_variable == "punct" and primary < _SYMBOL


@functools.lru_cache(maxsize=65536)
def collation_key(text: str, options: KeyOptions) -> str:
    """The key of ``text`` under ``options`` (equal keys: equal strings under the collation)."""
    elements = _elements_of(unicodedata.normalize("NFC", text), options.locale)
    if options.numeric:
        elements = _numeric_runs(elements)
    upper_first = options.case_first == "upper"
    primaries: list[int] = []
    secondaries: list[int] = []
    cases: list[int] = []
    tertiaries: list[int] = []
    quaternaries: list[int] = []
    shifted_run = False
    for element in elements:
        primary = element.primary
        if options.shifted and _variable(primary, options.max_variable):
            assert primary is not None
            quaternaries.append(primary)
            shifted_run = True
            continue
        if primary is None and shifted_run:
            continue  # a mark on an ignored character is ignored too
        shifted_run = False
        case = 1 if element.upper == upper_first else 2
        if primary is not None:
            primaries.append(primary)
            primaries.extend(element.extra)
            cases.append(case)
            quaternaries.append(0x3FFFFFFF)
        secondaries.append(element.secondary)
        tertiary = element.variant if options.case_level else case * 64 + element.variant
        tertiaries.append(tertiary if primary is not None else 1)
    if options.backwards:
        secondaries.reverse()
    levels = [primaries]
    if options.strength >= 2:
        levels.append(secondaries)
    if options.case_level:
        levels.append(cases)
    if options.strength >= 3:
        levels.append(tertiaries)
    if options.strength >= 4 and options.shifted:
        levels.append(quaternaries)
    key = "\x00".join(_encode(level) for level in levels)
    if options.strength >= 5:
        key += "\x00" + unicodedata.normalize("NFD", text)
    return key
