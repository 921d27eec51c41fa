"""Compiling one validated definition into everything the templates need."""

from __future__ import annotations

import hashlib
import keyword
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import json_util

from generator import document_paths, extended_json, filters, pipelines, time_triggers
from generator.durations import parse_duration
from generator.errors import BuildError, Problem
from generator.flow_control import FlowControl, parse_flow_control
from generator.identifiers import RESERVED, class_name, field_name, module_name
from generator.loader import RawDefinition, definition_stem, pointer_join
from generator.schemas import python_type, resolve_schema, schema_at_path
from runtime.reactor import (
    CleanupPolicy,
    DebouncePolicy,
    EvolutionPolicy,
    Policies,
    RetryPolicy,
    TimeTrigger,
)

NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
"""Reactor and cron job names; always used with ``fullmatch`` (``$`` would allow a final
newline)."""


@dataclass
class WatchedField:
    """One field of a reactor's watched-values model."""

    name: str
    key: str
    annotation: str
    source: str


@dataclass
class CompiledReactor:
    """A definition turned into names, types, expressions and policies."""

    name: str
    module: str
    class_prefix: str
    path: Path
    collection: str
    database: str | None
    model_class: str
    description: str
    schema: dict[str, Any]
    schema_source: Path | None
    filter: dict[str, Any]
    watch_projection: dict[str, Any] | None
    watched_fields: list[WatchedField]
    touched_paths: set[str] | None
    policies: Policies
    fingerprint: str
    raw: RawDefinition | None = None
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    time_triggers: tuple[TimeTrigger, ...] = ()
    warnings: list[Problem] = field(default_factory=list)
    """Paths the document schema allows but does not declare (printed, not fatal)."""

    def problem(self, pointer: str, message: str, hint: str = "") -> Problem:
        """A problem located at ``pointer`` in this reactor's definition file."""
        if self.raw is not None:
            return self.raw.problem(pointer, message, hint)
        return Problem(self.path, pointer, message, hint)

    @property
    def filter_json(self) -> str:
        """The filter as canonical Extended JSON (decoded by the generated module)."""
        return json_util.dumps(self.filter, json_options=json_util.CANONICAL_JSON_OPTIONS,
                               sort_keys=False)

    @property
    def watch_json(self) -> str:
        """The compiled watch projection as Extended JSON (``null`` = whole document)."""
        return json_util.dumps(self.watch_projection,
                               json_options=json_util.CANONICAL_JSON_OPTIONS)


def _ms(raw: RawDefinition, pointer: str, value: Any) -> int:
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise BuildError([raw.problem(pointer, str(exc))]) from exc


def _policies(raw: RawDefinition, flow: FlowControl) -> Policies:
    spec = raw.data.get("policies") or {}
    base = "/policies"
    debounce = DebouncePolicy()
    if "debounce" in spec:
        value = spec["debounce"]
        if isinstance(value, str):
            debounce = DebouncePolicy(delay_ms=_ms(raw, f"{base}/debounce", value))
        else:
            max_wait = value.get("maxWait")
            debounce = DebouncePolicy(
                delay_ms=_ms(raw, f"{base}/debounce/delay", value["delay"]),
                max_wait_ms=_ms(raw, f"{base}/debounce/maxWait", max_wait)
                if max_wait is not None else None)
            if debounce.max_wait_ms is not None and debounce.max_wait_ms < debounce.delay_ms:
                raise BuildError([raw.problem(f"{base}/debounce/maxWait",
                                              "maxWait is shorter than the debounce delay",
                                              "make maxWait at least as long as delay")])
    retry_spec = spec.get("retry") or {}
    rp = f"{base}/retry"
    strategy = retry_spec.get("strategy", "exponential")
    defaults = RetryPolicy()
    retry = RetryPolicy(
        strategy=strategy,
        interval_ms=_ms(raw, f"{rp}/interval", retry_spec["interval"])
        if "interval" in retry_spec else defaults.interval_ms,
        min_ms=_ms(raw, f"{rp}/min", retry_spec["min"]) if "min" in retry_spec
        else defaults.min_ms,
        max_ms=_ms(raw, f"{rp}/max", retry_spec["max"]) if "max" in retry_spec
        else defaults.max_ms,
        factor=float(retry_spec.get("factor", defaults.factor)),
        jitter=float(retry_spec.get("jitter", defaults.jitter)),
        delays_ms=tuple(_ms(raw, f"{rp}/delays/{i}", d)
                        for i, d in enumerate(retry_spec.get("delays", []))),
        cron=retry_spec.get("cron"),
        max_attempts=retry_spec.get("maxAttempts", defaults.max_attempts),
        max_duration_ms=_ms(raw, f"{rp}/maxDuration", retry_spec["maxDuration"])
        if "maxDuration" in retry_spec else None,
        reset_on_data_change=bool(retry_spec.get("resetOnDataChange", True)),
    )
    if strategy == "series" and not retry.delays_ms:
        raise BuildError([raw.problem(rp, "the series strategy needs 'delays'",
                                      "add delays: [1s, 10s, 1m]")])
    if strategy == "cron" and not retry.cron:
        raise BuildError([raw.problem(rp, "the cron strategy needs 'cron'",
                                      "add cron: '*/5 * * * *'")])
    if retry.min_ms > retry.max_ms:
        raise BuildError([raw.problem(f"{rp}/min", "retry min is longer than max",
                                      "make min <= max")])
    cleanup_spec = spec.get("cleanup") or {}
    cleanup = CleanupPolicy(
        when=cleanup_spec.get("when", "sourceDeleted"),
        keep_for_ms=_ms(raw, f"{base}/cleanup/keepFor", cleanup_spec["keepFor"])
        if "keepFor" in cleanup_spec else 0)
    evolution_spec = spec.get("evolution") or {}
    evolution = EvolutionPolicy(
        handler_version=int(evolution_spec.get("handlerVersion", 1)),
        on_version_increase=evolution_spec.get("onVersionIncrease", "none"),
        reconcile_on_trigger_change=bool(evolution_spec.get("reconcileOnTriggerChange", True)))
    return Policies(
        debounce=debounce,
        retry=retry,
        timeout_ms=_ms(raw, f"{base}/timeout", spec["timeout"]) if "timeout" in spec else None,
        cleanup=cleanup,
        concurrency=flow.concurrency,
        cluster_concurrency=flow.cluster_concurrency,
        key_concurrency=flow.key_concurrency,
        rate_limit=flow.rate_limit,
        priority=flow.priority,
        history_limit=int(spec.get("history", 5)),
        evolution=evolution,
    )


def _extended_json(raw: RawDefinition, pointer: str, value: Any) -> Any:
    try:
        return extended_json.decode(value, pointer)
    except extended_json.ExtendedJsonError as exc:
        raise BuildError([raw.problem(exc.pointer, exc.message, exc.hint)]) from exc


def compile_definition(raw: RawDefinition) -> CompiledReactor:
    """Compile a definition already validated against the definition format."""
    data = raw.data
    name = data.get("name") or definition_stem(raw.path)
    if "name" not in data and not NAME_PATTERN.fullmatch(name):
        raise BuildError([raw.problem("", f"the file name gives the reactor name {name!r}, "
                                      "which is not a valid reactor name",
                                      "add name: <letters, digits, _ . -> (starting with a "
                                      "letter), or rename the file")])
    module = module_name(name)
    if module == "database" or module.startswith("database_"):
        raise BuildError([raw.problem("/name" if "name" in data else "",
                                      f"reactor name {name!r} gives the module name "
                                      f"{module!r}; names starting with 'database' are "
                                      "reserved for the per-database pipelines "
                                      "(pipelines/database_<db>.json)",
                                      "choose another name, e.g. prefix it with the "
                                      "collection name")])
    collection = data["collection"]
    schema, schema_source = resolve_schema(raw.path, data["schema"], "/schema", raw.line_of,
                                           raw.reference_roots)
    if "model" in data:
        model_class = data["model"]
        if model_class in RESERVED or keyword.iskeyword(model_class):
            raise BuildError([raw.problem("/model", f"model name {model_class!r} is used by "
                                          "the generated modules themselves",
                                          f"choose another name, e.g. {model_class}Document")])
    else:
        model_class = (class_name(schema["title"]) if isinstance(schema.get("title"), str)
                       else class_name(collection))
    trigger = data.get("trigger") or {}
    paths: set[str] = set()
    query: dict[str, Any] = {}
    clock_triggers: tuple[TimeTrigger, ...] = ()
    try:
        if "filter" in trigger:
            spec = trigger["filter"]
            if filters.is_expression_filter(spec):
                filters.check_expression(spec, "/trigger/filter", paths)
            else:
                filters.check_query(spec, "/trigger/filter", paths)
            clock_triggers = time_triggers.find_time_triggers(spec, "/trigger/filter")
            query = filters.normalise_filter(_extended_json(raw, "/trigger/filter", spec))
        watch = trigger.get("watch")
        projection: dict[str, Any] | None
        fields: list[WatchedField] = []
        taken: set[str] = set()
        if watch is None:
            projection = None
            touched: set[str] | None = None
        elif isinstance(watch, list):
            projection = {}
            for path in watch:
                key = field_name(path, taken)
                node, crossed = schema_at_path(schema, path)
                annotation = python_type(node)
                if crossed:
                    annotation = f"list[{annotation}]"
                projection[key] = f"${path}"
                fields.append(WatchedField(key, key, f"{annotation} | None", path))
                paths.add(path)
            touched = set(paths)
        else:
            watch_paths: set[str] = set()
            filters.check_watch_projection(watch, "/trigger/watch", watch_paths)
            time_triggers.check_watch_clock(watch, "/trigger/watch")
            projection = {}
            for key, value in watch.items():
                out = field_name(key, taken)
                if value in (1, True):
                    node, crossed = schema_at_path(schema, key)
                    annotation = python_type(node)
                    if crossed:
                        annotation = f"list[{annotation}]"
                    projection[out] = f"${key}"
                else:
                    annotation = "Any"
                    projection[out] = _extended_json(raw, pointer_join("/trigger/watch", key),
                                                    value)
                fields.append(WatchedField(out, out, f"{annotation} | None", key))
            paths |= watch_paths
            touched = set(paths)
        if filters.WHOLE_DOCUMENT in paths:
            touched = None
    except filters.FilterError as exc:
        raise BuildError([raw.problem(exc.pointer, exc.message, exc.hint)]) from exc
    schema_label = (relative_to_file(schema_source, raw.path) if schema_source is not None
                    else "inline in the definition")
    findings = document_paths.check_trigger(raw, schema, schema_label, trigger)
    if findings.errors:
        raise BuildError(findings.errors)
    policies = _policies(raw, parse_flow_control(raw, schema, schema_label))
    fingerprint_source = json_util.dumps({"filter": query, "watch": projection},
                                         json_options=json_util.CANONICAL_JSON_OPTIONS,
                                         sort_keys=True)
    fingerprint = hashlib.sha256(fingerprint_source.encode()).hexdigest()[:16]
    compiled = CompiledReactor(
        name=name,
        module=module,
        class_prefix=class_name(name),
        path=raw.path,
        collection=collection,
        database=data.get("database"),
        model_class=model_class,
        description=str(data.get("description", "")),
        schema=schema,
        schema_source=schema_source,
        filter=query,
        watch_projection=projection,
        watched_fields=fields,
        touched_paths=touched,
        policies=policies,
        fingerprint=fingerprint,
        raw=raw,
        time_triggers=clock_triggers,
        warnings=findings.warnings,
    )
    compiled.pipeline = pipelines.pipeline_for(
        [pipelines.collection_clause(collection, touched)], database_events=False)
    return compiled


def relative_to_file(path: Path, origin: Path) -> str:
    """``path`` as seen from the folder of ``origin`` (short, and stable across machines)."""
    try:
        return Path(os.path.relpath(path.resolve(), origin.resolve().parent)).as_posix()
    except ValueError:
        return path.as_posix()


def check_unique_names(reactors: list[CompiledReactor]) -> list[Problem]:
    """Two definitions may not share a name or a module name."""
    problems: list[Problem] = []
    seen: dict[str, CompiledReactor] = {}
    for reactor in reactors:
        for key in (f"name:{reactor.name}", f"module:{reactor.module}"):
            other = seen.get(key)
            if other is not None and other is not reactor:
                kind, value = key.split(":", 1)
                what = ("has the same name as the one" if kind == "name" else
                        f"maps to the same Python module {value!r} as {other.name!r}")
                problems.append(reactor.problem(
                    "/name" if reactor.raw is None or "name" in reactor.raw.data else "",
                    f"reactor {reactor.name!r} {what} defined in "
                    f"{relative_to_file(other.path, reactor.path)}",
                    "give one of them a different 'name' (names are turned into module "
                    "names: lowercase, with anything but letters and digits replaced by _)"))
                break  # a duplicate name is also a duplicate module: report it once
            seen[key] = reactor
    return problems
