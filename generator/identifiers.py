"""Turning arbitrary names from definitions into safe, unique Python identifiers."""

from __future__ import annotations

import keyword
import re
import unicodedata

# Names generated modules define or import themselves, which a reactor module may not shadow.
RESERVED = frozenset({
    # reactor modules
    "REACTOR", "FILTER", "WATCH", "PIPELINE", "Context", "Policies", "ReactorSpec",
    "TaskContext", "RetryPolicy", "DebouncePolicy", "CleanupPolicy", "EvolutionPolicy", "Any",
    "TypeAlias", "json", "json_util", "datetime", "annotations", "BaseModel", "Field",
    "ConfigDict", "ObjectId", "TimeTrigger", "KeyConcurrency", "RateLimit", "PriorityPolicy",
    # model modules
    "DocumentModel", "Annotated", "AwareDatetime", "Decimal", "Enum", "Literal", "RootModel",
    # package layout
    "generated", "runtime", "registry", "models", "reactors", "handlers", "pipelines",
    "indexes", "manifest",
})


def module_name(name: str) -> str:
    """A lowercase module name for ``name``: ASCII letters, digits and underscores."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", ascii_name)
    cleaned = re.sub(r"[^0-9a-zA-Z]+", "_", snake).strip("_").lower()
    if not cleaned:
        cleaned = "reactor"
    if cleaned[0].isdigit():
        cleaned = f"r_{cleaned}"
    if keyword.iskeyword(cleaned) or keyword.issoftkeyword(cleaned) or cleaned in RESERVED:
        cleaned = f"{cleaned}_"
    return cleaned


def class_name(name: str) -> str:
    """A CamelCase class name for ``name``."""
    parts = [p for p in re.split(r"[^0-9a-zA-Z]+", module_name(name)) if p]
    result = "".join(p[:1].upper() + p[1:] for p in parts) or "Document"
    if result[0].isdigit():
        result = f"C{result}"
    if result in RESERVED or keyword.iskeyword(result):
        result = f"{result}Model"
    return result


# Attributes of pydantic models that a field may not shadow (besides everything model_*).
PYDANTIC_ATTRIBUTES = frozenset({
    "schema", "json", "dict", "copy", "validate", "construct", "fields", "parse_obj",
    "parse_raw", "from_orm", "update_forward_refs",
})


def field_name(name: str, taken: set[str]) -> str:
    """A snake_case attribute name for a document field, unique among ``taken``."""
    base = module_name(name).lstrip("_") or "field"
    if base.startswith("model_"):
        base = f"field_{base}"
    elif base in PYDANTIC_ATTRIBUTES:
        base = f"{base}_"
    candidate = base
    counter = 1
    while candidate in taken:
        candidate = f"{base}_{counter}"
        counter += 1
    taken.add(candidate)
    return candidate
