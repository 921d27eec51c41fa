"""Loading definition and schema files within fixed bounds, so hostile input becomes a problem.

A definition file is at most :data:`MAX_FILE_BYTES` long, nested at most :data:`MAX_NESTING`
levels deep, expands (YAML aliases counted at every use) to at most :data:`MAX_NODES` values and
parses within :data:`MAX_LOAD_SECONDS`. Mapping keys are strings, integers fit in 64 bits and
numbers are finite: what MongoDB and generated Python code can hold. Every violation is a
:class:`LoadLimitError` that names the line (and, after loading, the JSON pointer).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024
"""Largest definition or schema file read (1 MiB)."""
MAX_NESTING = 64
"""Deepest nesting of mappings and lists."""
MAX_NODES = 100_000
"""Most values in one file, counting each use of a YAML alias as a copy of its anchor."""
MAX_LOAD_SECONDS = 10.0
"""Longest time parsing one file may take."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_MAX_INT_TEXT = 100
"""Longest integer literal converted at all (longer ones are out of range anyway)."""


class Limit(Enum):
    """Which bound a file broke."""

    SIZE = "size"
    NESTING = "nesting"
    NODES = "nodes"
    TIME = "time"
    KEY = "key"
    NUMBER = "number"


@dataclass(eq=False)
class LoadLimitError(Exception):
    """A file breaks one of the loading bounds (or holds a value no output can represent)."""

    limit: Limit
    message: str
    hint: str
    line: int | None = None
    pointer: str = ""

    def __str__(self) -> str:
        return self.message


def read_bounded(path: Path) -> str:
    """The UTF-8 text of ``path``, refused beyond :data:`MAX_FILE_BYTES`.

    Raises ``OSError``/``UnicodeDecodeError`` as reading does, and :class:`LoadLimitError`.
    """
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise LoadLimitError(Limit.SIZE, f"file is larger than {MAX_FILE_BYTES} bytes (1 MiB)",
                             "split it up; definitions and schemas are expected to be small")
    return data.decode("utf-8")


def _nesting_error(line: int | None) -> LoadLimitError:
    return LoadLimitError(Limit.NESTING, f"nested more than {MAX_NESTING} levels deep",
                          "flatten the structure (MongoDB itself refuses documents nested "
                          "100 levels deep)", line)


def _nodes_error(line: int | None) -> LoadLimitError:
    return LoadLimitError(Limit.NODES, f"expands to more than {MAX_NODES} values (YAML "
                          "aliases count once per use)",
                          "remove the repeated aliases (*name) or write the data out once", line)


def _time_error(line: int | None) -> LoadLimitError:
    return LoadLimitError(Limit.TIME, f"parsing took longer than {MAX_LOAD_SECONDS:.0f} s",
                          "simplify the file", line)


class _ExpansionCounter:
    """Running depth and expanded size of a YAML event stream (aliases counted per use)."""

    def __init__(self) -> None:
        self.open: list[tuple[int, str | None]] = []  # (values so far, anchor) per collection
        self.anchored: dict[str, int] = {}
        self.total = 0
        self.deadline = time.monotonic() + MAX_LOAD_SECONDS

    def see(self, event: yaml.Event) -> None:
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if time.monotonic() > self.deadline:
            raise _time_error(line)
        if isinstance(event, yaml.CollectionStartEvent):
            if len(self.open) >= MAX_NESTING:
                raise _nesting_error(line)
            self.open.append((0, event.anchor))
            return
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = self.open.pop()
            self._add(size + 1, anchor, line)
        elif isinstance(event, yaml.ScalarEvent):
            self._add(1, event.anchor, line)
        elif isinstance(event, yaml.AliasEvent):
            self._add(self.anchored.get(str(event.anchor), 1), None, line)

    def _add(self, size: int, anchor: str | None, line: int | None) -> None:
        if anchor is not None:
            self.anchored[anchor] = size
        self.total += size if not self.open else 0
        if self.open:
            count, own = self.open[-1]
            self.open[-1] = (count + size, own)
        if self.total > MAX_NODES or sum(count for count, _ in self.open) > MAX_NODES:
            raise _nodes_error(line)


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that stops at the nesting, expansion and time bounds while parsing, and
    refuses duplicate keys, non-string keys and integers beyond 64 bits with their line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.counter = _ExpansionCounter()

    def get_event(self) -> yaml.Event:  # type: ignore[no-untyped-def,unused-ignore]
        """The next parser event, counted against the bounds."""
        event: yaml.Event = super().get_event()  # type: ignore[no-untyped-call,unused-ignore]
        self.counter.see(event)
        return event


def _mapping_without_duplicates(loader: BoundedLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        _check_key(key_node, "")  # already checked with its pointer; keeps hashing safe
        key = str(loader.construct_object(key_node))
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return dict(loader.construct_mapping(node))


def _bounded_int(loader: BoundedLoader, node: yaml.ScalarNode) -> int | _HugeInt:
    """An integer; one too long to convert becomes a :class:`_HugeInt` that
    :func:`check_values` reports with its pointer."""
    digits = len(str(node.value).replace("_", "").lstrip("+-"))
    if digits > _MAX_INT_TEXT:
        return _HugeInt(digits)
    value: int = loader.construct_yaml_int(node)
    return value


def _int_error(line: int | None, digits: int, pointer: str = "") -> LoadLimitError:
    return LoadLimitError(Limit.NUMBER, f"integer with {digits} digits does not fit in 64 bits",
                          f"use an integer between {INT64_MIN} and {INT64_MAX} (MongoDB's "
                          "largest integer type), or a decimal number such as 1e30", line,
                          pointer)


BoundedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)
BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
# Timestamps stay strings: durations and dates in filters are interpreted by us, not by YAML.
BoundedLoader.yaml_implicit_resolvers = {
    k: [(tag, regexp) for tag, regexp in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _pointer_join(pointer: str, key: str | int) -> str:
    return f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"


_STRING_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _index_nodes(root: yaml.Node) -> dict[str, int]:
    """The line of each JSON pointer of a composed document, walked iteratively (each node
    once, so aliases cost nothing); refuses keys that are not strings, naming their pointer."""
    lines: dict[str, int] = {}
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    visited: set[int] = set()
    while stack:
        node, pointer = stack.pop()
        lines.setdefault(pointer, node.start_mark.line + 1)
        if id(node) in visited:
            continue  # an alias: its lines are those of the anchor
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                _check_key(key_node, pointer)
                child = _pointer_join(pointer, key_node.value)
                lines[child] = key_node.start_mark.line + 1
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, _pointer_join(pointer, index))
                         for index, item in enumerate(node.value))
    return lines


_TAG_KINDS = {"tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number",
              "tag:yaml.org,2002:bool": "a boolean", "tag:yaml.org,2002:null": "null"}


def _check_key(key_node: yaml.Node, pointer: str) -> None:
    line = key_node.start_mark.line + 1
    if not isinstance(key_node, yaml.ScalarNode):
        kind = "list" if isinstance(key_node, yaml.SequenceNode) else "mapping"
        raise LoadLimitError(Limit.KEY, f"a mapping key must be a string, not a {kind} (a "
                             "complex '? ...' key)", "use a plain field name as the key", line,
                             pointer)
    if key_node.tag not in (_STRING_TAG, _MERGE_TAG):
        kind = _TAG_KINDS.get(key_node.tag, f"tagged {key_node.tag}")
        raise LoadLimitError(Limit.KEY, f"mapping key {key_node.value!r} is {kind}, not a "
                             "string", f"quote it if you mean the text: '{key_node.value}'",
                             line, _pointer_join(pointer, key_node.value))


def load_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """YAML data and the line of each JSON pointer, parsed once within the bounds.

    Raises ``yaml.YAMLError`` for syntax errors and :class:`LoadLimitError` beyond the bounds.
    """
    loader = BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines = _index_nodes(node)
        data = loader.construct_document(node)
    finally:
        loader.dispose()  # type: ignore[no-untyped-call,unused-ignore]
    return data, lines


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|\n')


def _json_nesting(text: str) -> None:
    """Refuse JSON nested beyond :data:`MAX_NESTING` before the (recursive) decoder sees it."""
    depth = 0
    line = 1
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise _nesting_error(line)
        elif char in "]}":
            depth -= 1
        else:
            line += char.count("\n")


class _HugeInt:
    """A JSON integer literal too long to convert (reported by :func:`check_values`)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _json_int(text: str) -> int | _HugeInt:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= _MAX_INT_TEXT else _HugeInt(digits)


def load_json(text: str) -> Any:
    """JSON data within the bounds (``NaN``/``Infinity`` and huge integers are refused later
    by :func:`check_values`). Raises ``json.JSONDecodeError`` and :class:`LoadLimitError`."""
    _json_nesting(text)
    return json.loads(text, parse_int=_json_int)


def check_values(data: Any, lines: dict[str, int] | None = None) -> None:
    """Refuse values no output can hold: non-finite floats, integers beyond 64 bits, non-string
    keys, and more than :data:`MAX_NODES` values or :data:`MAX_NESTING` levels (walked
    iteratively, so shared YAML anchors cannot blow it up unnoticed)."""

    def line_of(pointer: str) -> int | None:
        while lines:
            if pointer in lines:
                return lines[pointer]
            if not pointer:
                return None
            pointer = pointer.rsplit("/", 1)[0]
        return None

    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    visited = 0
    while stack:
        value, pointer, depth = stack.pop()
        visited += 1
        if visited > MAX_NODES:
            raise _nodes_error(line_of(pointer))
        if isinstance(value, dict | list) and depth >= MAX_NESTING:
            raise _nesting_error(line_of(pointer))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise LoadLimitError(Limit.KEY, f"mapping key {key!r} is not a string",
                                         "quote the key", line_of(pointer), pointer)
                stack.append((item, _pointer_join(pointer, key), depth + 1))
        elif isinstance(value, list):
            stack.extend((item, _pointer_join(pointer, index), depth + 1)
                         for index, item in enumerate(value))
        elif isinstance(value, _HugeInt):
            raise _int_error(line_of(pointer), value.digits, pointer)
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            raise _int_error(line_of(pointer), len(str(abs(value))), pointer)
        elif isinstance(value, float) and not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else "infinity"
            raise LoadLimitError(Limit.NUMBER, f"{shown} is not allowed here (the number is "
                                 "not finite, or too large for a 64-bit float)",
                                 "write a finite number (at most about 1.8e308); for MongoDB's "
                                 "NaN or infinity in a filter, write {$numberDouble: 'NaN'} or "
                                 "{$numberDouble: 'Infinity'}", line_of(pointer), pointer)
