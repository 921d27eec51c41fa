"""Rendering generated files with jinja2; every value from a definition goes through a filter
that makes it a Python (or JSON) literal, so names and strings can never break the code."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import textwrap
from typing import Any

import jinja2

LINE_BUDGET = 88


def _chunks(text: str, indent: int) -> list[str]:
    """``text`` as string literals that each fit on a line indented by ``indent + 4``."""
    chunks: list[str] = []
    current = ""
    for char in text:
        if current and len(repr(current + char)) + indent + 4 > LINE_BUDGET:
            chunks.append(repr(current))
            current = char
        else:
            current += char
    if current or not chunks:
        chunks.append(repr(current))
    return chunks


def py_string(text: str, indent: int = 4) -> str:
    """A Python string literal, split into implicitly concatenated lines if long."""
    literal = repr(text)
    if len(literal) + indent <= LINE_BUDGET:
        return literal
    pad = " " * indent
    return "(\n" + "".join(f"{pad}    {c}\n" for c in _chunks(text, indent)) + f"{pad})"


def py_string_lines(text: str, indent: int) -> str:
    """A long string as implicitly concatenated literals, one per line, each at ``indent``
    (for the single argument of a call, where extra parentheses would be redundant)."""
    pad = " " * indent
    return "\n".join(f"{pad}{c}" for c in _chunks(text, indent - 4))


MAX_LITERAL_DEPTH = 6


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list | tuple):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def py_data(value: Any, column: int) -> tuple[str, str | None]:
    """Python source for plain or BSON data on the right of an assignment at ``column``, and
    the module it needs (``None``, ``"json"`` or ``"json_util"``).

    Plain, shallow data becomes a Python literal; deeply nested data (which would not fit the
    line length as a literal) is loaded from JSON, and BSON values (dates, ObjectIds) from
    relaxed Extended JSON.
    """
    if is_plain_json(value) and _depth(value) <= MAX_LITERAL_DEPTH:
        return py_value(value, 0, column), None
    if is_plain_json(value):
        text, module = json.dumps(value, ensure_ascii=False), "json"
    else:
        from bson import json_util

        text = json_util.dumps(value, json_options=json_util.RELAXED_JSON_OPTIONS,
                               ensure_ascii=False)
        module = "json_util"
    return f"{module}.loads(\n{py_string_lines(text, 4)}\n)", module


def py_docstring(text: str, indent: int = 0) -> str:
    """A triple-quoted docstring for arbitrary text (backslashes and quotes escaped)."""
    cleaned = "".join(c if c.isprintable() or c == "\n" else " " for c in text.strip())
    cleaned = cleaned.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    if cleaned.endswith('"'):
        cleaned += " "
    pad = " " * indent
    lines: list[str] = []
    for paragraph_line in cleaned.split("\n"):
        wrapped = textwrap.wrap(paragraph_line, width=LINE_BUDGET - indent - 4) or [""]
        lines.extend(wrapped)
    if len(lines) == 1:
        return f'"""{lines[0]}"""'
    body = "\n".join(f"{pad}{line}" if line else "" for line in lines[1:])
    return f'"""{lines[0]}\n{body}\n{pad}"""'


def py_comment(text: str, label: str = "") -> str:
    """``# label text`` over as many comment lines as needed (never a line break inside)."""
    flat = "".join(c if c.isprintable() else "?" for c in f"{label}{text}")
    width = LINE_BUDGET - 2
    return "\n".join("# " + flat[i : i + width] for i in range(0, len(flat), width)) or "#"


def is_plain_json(value: Any) -> bool:
    """Only JSON types and finite floats (so a Python literal can express it without
    imports)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(is_plain_json(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)  # repr(nan) is not Python: those go through json_util
    return value is None or isinstance(value, str | bool | int)


class ConstantName:
    """A module-level constant of the generated module, rendered by :func:`py_literal` as its
    bare name (so data from a definition is rendered once, as a literal, by ``py_data``)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not (name.isascii() and name.isidentifier() and name.isupper()):
            raise ValueError(f"not a constant name: {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"ConstantName({self.name!r})"


def py_literal(value: Any, indent: int = 0) -> str:
    """A Python expression for a policy dataclass tree (one argument per line)."""
    pad = " " * indent
    if isinstance(value, ConstantName):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        parts = [f"{pad}    {f.name}={py_literal(getattr(value, f.name), indent + 4)},"
                 for f in dataclasses.fields(value)]
        return f"{type(value).__name__}(\n" + "\n".join(parts) + f"\n{pad})"
    if isinstance(value, str):
        return py_string(value, indent + 4)
    if isinstance(value, tuple):
        inner = ", ".join(py_literal(v, indent) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cannot render the non-finite number {value!r} as a literal")
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    raise TypeError(f"cannot render {type(value).__name__} as a literal")


def py_value(value: Any, indent: int = 0, column: int | None = None) -> str:
    """A Python literal for plain data (str, numbers, lists, tuples, dicts), wrapped to fit.

    Containers that fit on the rest of the line stay inline; others get one item per line.
    """
    inline = repr(value)
    start = indent if column is None else column
    if len(inline) + start <= LINE_BUDGET and "\n" not in inline:
        return inline
    pad = " " * indent
    inner = indent + 4
    if isinstance(value, dict):
        items = [f"{' ' * inner}{py_string(k, inner)}: {py_value(v, inner)},"
                 for k, v in value.items()]
        return "{\n" + "\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list | tuple):
        items = [f"{' ' * inner}{py_value(v, inner)}," for v in value]
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        return open_ + "\n" + "\n".join(items) + f"\n{pad}{close}"
    if isinstance(value, str):
        return py_string(value, indent)
    return inline


@functools.cache
def environment() -> jinja2.Environment:
    """The template environment (templates ship in generator/templates)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("generator", "templates"),
        autoescape=False,  # we render Python and JSON, escaped by the filters below
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pystr"] = py_string
    env.filters["pyliteral"] = py_literal
    env.filters["pyrepr"] = repr
    env.filters["docstring"] = py_docstring
    env.filters["comment"] = py_comment
    env.filters["pyvalue"] = py_value
    env.filters["json"] = lambda v: json.dumps(v, ensure_ascii=False)
    return env


def render(template: str, **context: Any) -> str:
    """Render one template."""
    return environment().get_template(template).render(**context)
