"""Pydantic models of document schemas, produced with datamodel-code-generator (as a library).

Generation costs a few hundred milliseconds per schema, so results are cached by the digest of
the schema and options under ``.reactgen/cache/models``; the output is deterministic either way.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any

from generator.errors import BuildError, Problem

MODEL_OPTIONS_VERSION = "1"
_OPTIONS: dict[str, Any] = {
    "disable_timestamp": True,
    "use_standard_collections": True,
    "use_union_operator": True,
    "snake_case_field": True,
    "use_annotated": True,
    "output_datetime_class": "datetime",
    "remove_special_field_name_prefix": True,
    "allow_population_by_field_name": True,
    "base_class": "runtime.document_model.DocumentModel",
    "use_double_quotes": True,
}


def library_version() -> str:
    """The installed datamodel-code-generator version (its output may change with it)."""
    try:
        return importlib.metadata.version("datamodel-code-generator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _digest(schema: dict[str, Any], class_name: str) -> str:
    payload = json.dumps({"schema": schema, "class": class_name,
                          "options": [MODEL_OPTIONS_VERSION, _OPTIONS],
                          "library": library_version()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def generate_model_code(schema: dict[str, Any], class_name: str, source: Path,
                        cache_dir: Path | None) -> str:
    """Python source defining ``class_name`` (and its nested models) for ``schema``."""
    digest = _digest(schema, class_name)
    cached = cache_dir / f"{digest}.py" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return cached.read_text(encoding="utf-8")
    from datamodel_code_generator import InputFileType, PythonVersion, generate
    from datamodel_code_generator._format_types import Formatter
    from datamodel_code_generator.enums import DataModelType

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = generate(
                json.dumps(schema, sort_keys=False),
                input_file_type=InputFileType.JsonSchema,
                output_model_type=DataModelType.PydanticV2BaseModel,
                target_python_version=PythonVersion.PY_311,
                class_name=class_name,
                formatters=[Formatter.BUILTIN],
                **_OPTIONS,
            )
    except Exception as exc:  # the library raises many unrelated types
        raise BuildError([Problem(source, "/schema", f"cannot generate a model: {exc}",
                                  "simplify the schema or report the construct")]) from exc
    if not isinstance(code, str):
        raise BuildError([Problem(source, "/schema", "model generation produced no code")])
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(code, encoding="utf-8")
        tmp.replace(cached)
    return code
