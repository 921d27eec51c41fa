"""Cron definitions (``*.cron.yaml``): finding, validating and compiling them, and what
``reactgen build`` generates for them (a typed module, a handler stub, registry entries and the
indexes of ``reactgen_cron_tasks``).

The format is described in docs/cron.md; its JSON Schema is ``cron-definition.schema.json``.
Problems are reported like those of reactor definitions: file, line, JSON pointer and a fix.
"""

from __future__ import annotations

import difflib
import json
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from croniter import croniter

from generator.definitions import NAME_PATTERN, CompiledReactor, relative_to_file
from generator.durations import parse_duration
from generator.errors import BuildError, Problem
from generator.identifiers import module_name
from generator.indexes import IndexPlan, task_indexes
from generator.loader import (
    FormatValidator,
    RawDefinition,
    _describe,
    find_definitions,
    parse_file,
    pointer_join,
)
from generator.render import render
from runtime.cron_spec import (
    CRON_TASKS_COLLECTION,
    DEFAULT_KEEP_LAST,
    DEFAULT_MAX_CATCH_UP,
    DEFAULT_STARTING_DEADLINE_MS,
    CatchUp,
    Schedule,
    ScheduleKind,
)
from runtime.reactor import CleanupPolicy, Policies, RetryPolicy

CRON_SUFFIXES = (".cron.yaml", ".cron.yml", ".cron.json")
SCHEDULE_HINT = ("write schedule: '*/15 * * * *' (five fields: minute hour day-of-month month "
                 "day-of-week, quoted) or schedule: {every: 30s}")


@dataclass
class CompiledCron:
    """A cron definition turned into names, a schedule and policies."""

    name: str
    module: str
    path: Path
    description: str
    schedule: Schedule
    catch_up: CatchUp
    max_catch_up: int
    starting_deadline_ms: int
    keep_last: int
    policies: Policies
    raw: RawDefinition | None = None

    def problem(self, pointer: str, message: str, hint: str = "") -> Problem:
        """A problem located at ``pointer`` in this job's definition file."""
        if self.raw is not None:
            return self.raw.problem(pointer, message, hint)
        return Problem(self.path, pointer, message, hint)


def find_cron_definitions(root: Path) -> list[Path]:
    """Every ``*.cron.{yaml,yml,json}`` below ``root``, sorted."""
    if root.is_file():
        return [root] if root.name.endswith(CRON_SUFFIXES) else []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(CRON_SUFFIXES))


def cron_stem(path: Path) -> str:
    """``jobs/nightly.cron.yaml`` -> ``nightly``."""
    for suffix in CRON_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


@cache
def cron_schema() -> dict[str, Any]:
    """The JSON Schema of the cron definition format (shipped as package data)."""
    text = resources.files("generator").joinpath("cron-definition.schema.json").read_text(
        encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def validate_cron(raw: RawDefinition) -> list[Problem]:
    """Check a parsed cron definition against the format's JSON Schema."""
    validator = FormatValidator(cron_schema())
    problems = []
    for error in sorted(validator.iter_errors(raw.data), key=lambda e: list(map(str, e.path))):
        if list(error.absolute_path) == ["schedule"] and error.validator == "oneOf" and not any(
                len(e.absolute_path) > 1 for e in error.context or []):
            problems.append(raw.problem("/schedule", f"invalid schedule {error.instance!r}",
                                        SCHEDULE_HINT))
            continue
        message, hint, extra = _describe(error)
        pointer = ""
        for token in [*error.absolute_path, *extra]:
            pointer = pointer_join(pointer, token)
        problems.append(raw.problem(pointer, message, hint))
    return problems


def _ms(raw: RawDefinition, pointer: str, value: Any) -> int:
    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise BuildError([raw.problem(pointer, str(exc))]) from exc


def _timezone(raw: RawDefinition, name: str) -> str:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        hint = (f"did you mean {close[0]!r}? " if close else "") + \
            "use an IANA time zone name such as UTC, Europe/Berlin or America/New_York"
        raise BuildError([raw.problem("/timezone", f"unknown time zone {name!r}", hint)]) \
            from None
    return name


def _schedule(raw: RawDefinition) -> Schedule:
    value = raw.data["schedule"]
    timezone = raw.data.get("timezone")
    if isinstance(value, dict) and "every" in value:
        if timezone is not None:
            raise BuildError([raw.problem(
                "/timezone", "a time zone has no effect on an interval schedule (every: is "
                "counted from the Unix epoch in UTC)",
                "remove 'timezone', or write the schedule as a cron expression evaluated in "
                "that zone")])
        every = _ms(raw, "/schedule/every", value["every"])
        if every < 1000:
            raise BuildError([raw.problem("/schedule/every", f"interval {value['every']!r} is "
                                          "shorter than 1s", "use an interval of at least 1s")])
        return Schedule(ScheduleKind.EVERY, every_ms=every)
    expression = " ".join(str(value["cron"] if isinstance(value, dict) else value).split())
    pointer = "/schedule/cron" if isinstance(value, dict) else "/schedule"
    if not croniter.is_valid(expression):
        raise BuildError([raw.problem(pointer, f"invalid cron expression {expression!r}",
                                      "five fields: minute (0-59) hour (0-23) day-of-month "
                                      "(1-31) month (1-12) day-of-week (0-6, 0 = Sunday); each "
                                      "*, a number, a range a-b, a list a,b or a step */n")])
    return Schedule(ScheduleKind.CRON, expression=expression,
                    timezone=_timezone(raw, timezone) if timezone is not None else "UTC")


def _retry(raw: RawDefinition, spec: dict[str, Any]) -> RetryPolicy:
    rp = "/policies/retry"
    defaults = RetryPolicy()

    def duration(key: str, default: int) -> int:
        return _ms(raw, f"{rp}/{key}", spec[key]) if key in spec else default

    retry = RetryPolicy(
        strategy=spec.get("strategy", defaults.strategy),
        interval_ms=duration("interval", defaults.interval_ms),
        min_ms=duration("min", defaults.min_ms), max_ms=duration("max", defaults.max_ms),
        factor=float(spec.get("factor", defaults.factor)),
        jitter=float(spec.get("jitter", defaults.jitter)),
        delays_ms=tuple(_ms(raw, f"{rp}/delays/{i}", d)
                        for i, d in enumerate(spec.get("delays", []))),
        cron=spec.get("cron"), max_attempts=spec.get("maxAttempts", defaults.max_attempts),
        max_duration_ms=_ms(raw, f"{rp}/maxDuration", spec["maxDuration"])
        if "maxDuration" in spec else None)
    if retry.strategy == "series" and not retry.delays_ms:
        raise BuildError([raw.problem(rp, "the series strategy needs 'delays'",
                                      "add delays: [1s, 10s, 1m]")])
    if retry.strategy == "cron" and not retry.cron:
        raise BuildError([raw.problem(rp, "the cron strategy needs 'cron'",
                                      "add cron: '*/5 * * * *'")])
    if retry.min_ms > retry.max_ms:
        raise BuildError([raw.problem(f"{rp}/min", "retry min is longer than max",
                                      "make min <= max")])
    return retry


def compile_cron(raw: RawDefinition) -> CompiledCron:
    """Compile a cron definition already validated against the format."""
    data = raw.data
    name = data.get("name") or cron_stem(raw.path)
    if "name" not in data and not NAME_PATTERN.fullmatch(name):
        raise BuildError([raw.problem("", f"the file name gives the cron job name {name!r}, "
                                      "which is not a valid name",
                                      "add name: <letters, digits, _ . -> (starting with a "
                                      "letter), or rename the file")])
    catch_up = CatchUp(data.get("catchUp", CatchUp.LATEST.value))
    if "maxCatchUp" in data and catch_up is not CatchUp.ALL:
        raise BuildError([raw.problem("/maxCatchUp", f"maxCatchUp only applies to catchUp: "
                                      f"all (this job has catchUp: {catch_up.value})",
                                      "remove maxCatchUp, or set catchUp: all")])
    spec = data.get("policies") or {}
    cleanup = spec.get("cleanup") or {}
    policies = Policies(
        retry=_retry(raw, spec.get("retry") or {}),
        timeout_ms=_ms(raw, "/policies/timeout", spec["timeout"]) if "timeout" in spec else None,
        cleanup=CleanupPolicy(when="never", keep_for_ms=_ms(
            raw, "/policies/cleanup/keepFor", cleanup["keepFor"]) if "keepFor" in cleanup
            else 0),
        concurrency=spec.get("concurrency"),
        history_limit=int(spec.get("history", 5)))
    return CompiledCron(
        name=name, module=module_name(name), path=raw.path,
        description=str(data.get("description", "")), schedule=_schedule(raw),
        catch_up=catch_up, max_catch_up=int(data.get("maxCatchUp", DEFAULT_MAX_CATCH_UP)),
        starting_deadline_ms=_ms(raw, "/startingDeadline", data["startingDeadline"])
        if "startingDeadline" in data else DEFAULT_STARTING_DEADLINE_MS,
        keep_last=int(cleanup.get("keepLast", DEFAULT_KEEP_LAST)), policies=policies, raw=raw)


def _parse(path: Path) -> RawDefinition:
    try:
        return parse_file(path)
    except BuildError as exc:
        problems = [Problem(p.file, p.pointer, "a cron definition must be a mapping",
                            "start the file with 'schedule: ...'", p.line)
                    if p.message.startswith("a reactor definition must be") else p
                    for p in exc.problems]
        raise BuildError(problems) from exc


def check_names(reactors: list[CompiledReactor], crons: list[CompiledCron]) -> list[Problem]:
    """Job names are unique among jobs and reactors (both name tasks and handler modules)."""
    problems: list[Problem] = []
    taken: dict[str, tuple[str, Path]] = {}
    for reactor in reactors:
        taken[f"name:{reactor.name}"] = (f"reactor {reactor.name!r}", reactor.path)
        taken[f"module:{reactor.module}"] = (f"reactor {reactor.name!r}", reactor.path)
    for cron in crons:
        for key in (f"name:{cron.name}", f"module:{cron.module}"):
            if key in taken:
                what, path = taken[key]
                same = ("has the same name as" if key.startswith("name:") else
                        f"maps to the same Python module {cron.module!r} as")
                problems.append(cron.problem(
                    "/name" if cron.raw is not None and "name" in cron.raw.data else "",
                    f"cron job {cron.name!r} {same} {what} defined in "
                    f"{relative_to_file(path, cron.path)}",
                    "give one of them a different 'name' (handlers of reactors and cron jobs "
                    "share generated/handlers/)"))
                break
            taken[key] = (f"cron job {cron.name!r}", cron.path)
    return problems


def load_all(root: Path, allow_ref_outside: Sequence[Path] = ()
             ) -> tuple[list[CompiledReactor], list[CompiledCron]]:
    """Reactors and cron jobs below ``root``, every problem of both reported at once
    (schema ``$ref``s may point into ``root`` and ``allow_ref_outside``)."""
    from generator.build import load_and_compile

    problems: list[Problem] = []
    reactors: list[CompiledReactor] = []
    cron_paths = find_cron_definitions(root)
    if find_definitions(root) or not cron_paths:
        try:
            reactors = load_and_compile(root, allow_ref_outside)
        except BuildError as exc:
            problems.extend(exc.problems)
    crons: list[CompiledCron] = []
    for path in cron_paths:
        try:
            raw = _parse(path)
            found = validate_cron(raw)
            if found:
                problems.extend(found)
                continue
            crons.append(compile_cron(raw))
        except BuildError as exc:
            problems.extend(exc.problems)
    if not problems:
        problems.extend(check_names(reactors, crons))
    if problems:
        raise BuildError(problems)
    return reactors, sorted(crons, key=lambda c: c.name)


def _dataclass_names(value: Any) -> set[str]:
    """Class names of every dataclass in a policy tree (what its literal needs imported)."""
    if not is_dataclass(value) or isinstance(value, type):
        return set()
    names = {type(value).__name__}
    for item in fields(value):
        names |= _dataclass_names(getattr(value, item.name))
    return names


def generate(crons: list[CompiledCron], package: str, relative: Any,
             files: dict[str, str], stubs: dict[str, str]) -> None:
    """Add each job's module and handler stub to the build's ``files`` and ``stubs``."""
    from generator.build import HEADER, _from_import, import_block

    if not crons:
        return
    files["crons/__init__.py"] = HEADER + '"""One module per cron job."""\n'
    for cron in crons:
        source = relative(cron.path)
        docstring = (f"Cron job {cron.name!r}: {cron.schedule.describe()}."
                     + (f"\n\n{cron.description}\n" if cron.description else ""))
        first_party = [
            _from_import("runtime.cron_spec", ["CatchUp", "CronContext", "CronSpec",
                                               "Schedule", "ScheduleKind"]),
            _from_import("runtime.reactor", sorted(_dataclass_names(cron.policies)))]
        files[f"crons/{cron.module}.py"] = render(
            "cron_module.py.j2", cron=cron, source=source, docstring=docstring,
            imports=import_block(["from typing import TypeAlias"], [], first_party),
            handler_path=f"{package}.handlers.{cron.module}:handle")
        stubs[f"handlers/{cron.module}.py"] = render(
            "cron_handler_stub.py.j2", cron=cron, package=package,
            docstring=f"Handler of cron job {cron.name!r} ({cron.schedule.describe()}).\n"
                      "\nCreated once by `reactgen build`; this file is yours to edit.\n")


def registry_imports(crons: list[CompiledCron], package: str) -> list[str]:
    """The registry's imports for ``CRONS`` (nothing without cron jobs)."""
    from generator.build import _from_import

    if not crons:
        return []
    return [_from_import(f"{package}.crons", [c.module for c in crons]),
            "from runtime.cron_spec import CronSpec"]


def index_plans(crons: list[CompiledCron]) -> list[IndexPlan]:
    """The task indexes of ``reactgen_cron_tasks`` (runtime database), if there are jobs."""
    return task_indexes(None, CRON_TASKS_COLLECTION) if crons else []


def manifest_entry(crons: list[CompiledCron], relative: Any) -> dict[str, Any]:
    """The manifest's record of the cron jobs (nothing without any)."""
    if not crons:
        return {}
    return {"crons": {c.name: {"module": c.module, "definition": relative(c.path),
                               "schedule": c.schedule.fingerprint,
                               "catchUp": c.catch_up.value} for c in crons}}


def cron_modules(paths: Iterable[str]) -> set[str]:
    """Module names of the cron jobs among generated file paths (``crons/<module>.py``)."""
    return {p[len("crons/"):-3] for p in paths
            if p.startswith("crons/") and p.endswith(".py") and p != "crons/__init__.py"}
