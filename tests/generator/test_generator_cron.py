"""Cron definitions (``*.cron.yaml``) in ``reactgen build``: what is generated (the golden case
``cron`` covers the exact output), that it lints and type-checks, and every error path with its
file, line, JSON pointer and fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from generator_support import CORPUS, reactgen, run_mypy, run_ruff, snapshot, write_files

from generator.cron import cron_schema
from generator.loader import definition_schema

REACTOR = ("collection: users\nschema:\n  type: object\n  properties:\n"
           "    _id: {type: string}\n")


def test_cron_format_reuses_the_reactor_retry_and_duration_schemas() -> None:
    reactor, cron = definition_schema()["$defs"], cron_schema()["$defs"]
    assert cron["duration"] == reactor["duration"]
    assert cron["policies"]["properties"]["retry"] == reactor["policies"]["properties"]["retry"]


def test_cron_only_application_builds_lints_and_type_checks(tmp_path: Path,
                                                            mypy_cache: Path) -> None:
    write_files(tmp_path, {"schemas/tick.cron.yaml": "schedule: {every: 1s}\n",
                           "schemas/jobs/report.cron.yaml": "schedule: '0 6 * * *'\n"
                                                            "timezone: Asia/Tokyo\n"})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 0, result.text
    files = snapshot(tmp_path / "app")
    assert {"crons/tick.py", "crons/report.py", "handlers/tick.py",
            "handlers/report.py"} <= set(files)
    registry = files["registry.py"].decode()
    assert "REACTORS: tuple[ReactorSpec, ...] = (\n)" in registry
    assert "    report.CRON,\n    tick.CRON," in registry
    indexes = files["indexes/setup_indexes.py"].decode()
    assert "'reactgen_cron_tasks'" in indexes and "reactgen_expiry" in indexes
    stub = files["handlers/report.py"].decode()
    assert "from app.crons.report import Context" in stub
    assert "async def handle(ctx: Context) -> None:" in stub
    assert not result.err, "no stub warnings for cron handlers"
    assert run_ruff(tmp_path, "app").code == 0
    mypy = run_mypy(tmp_path, "app", cache_dir=mypy_cache)
    assert mypy.code == 0, mypy.text
    (tmp_path / "app" / "handlers" / "report.py").write_text(
        stub + "\n\nasync def wrong(ctx: Context) -> None:\n    await ctx.get_document()\n",
        encoding="utf-8")
    assert "get_document" in run_mypy(tmp_path, "app", cache_dir=mypy_cache).text
    # A changed cron definition makes the output stale; an unchanged one is up to date.
    assert reactgen(tmp_path, "check", "schemas", "--out", "app").code == 0
    (tmp_path / "schemas" / "tick.cron.yaml").write_text("schedule: {every: 2s}\n", "utf-8")
    assert reactgen(tmp_path, "check", "schemas", "--out", "app").code == 3
    assert "is up to date" not in reactgen(tmp_path, "build", "schemas", "--out", "app").out


def test_corpus_cron_case_passes_ruff(tmp_path: Path) -> None:
    shutil.copytree(CORPUS / "cron", tmp_path / "schemas")
    assert reactgen(tmp_path, "build", "schemas", "--out", "app").code == 0
    result = run_ruff(tmp_path, "app")
    assert result.code == 0, result.text
    manifest = json.loads((tmp_path / "app" / "manifest.json").read_text("utf-8"))
    assert manifest["crons"]["heart-beat.v2"]["module"] == "heart_beat_v2"


ERRORS = [
    ("unknown_key", "schedule: {every: 1s}\ncatchup: none\n",
     ["job.cron.yaml:2: /catchup: unknown key 'catchup'", "fix: did you mean 'catchUp'?"]),
    ("bad_expression", "name: job\nschedule: '61 * * * *'\n",
     ["job.cron.yaml:2: /schedule: invalid cron expression '61 * * * *'",
      "fix: five fields: minute (0-59)"]),
    ("six_fields", "schedule: '0 0 * * * *'\n",
     ["job.cron.yaml:1: /schedule: invalid schedule '0 0 * * * *'",
      "fix: write schedule: '*/15 * * * *'"]),
    ("unknown_zone", "schedule: '0 6 * * *'\ntimezone: Europe/Berln\n",
     ["job.cron.yaml:2: /timezone: unknown time zone 'Europe/Berln'",
      "fix: did you mean 'Europe/Berlin'?"]),
    ("zone_with_interval", "schedule: {every: 1h}\ntimezone: Europe/Berlin\n",
     ["job.cron.yaml:2: /timezone: a time zone has no effect on an interval schedule",
      "fix: remove 'timezone'"]),
    ("bad_duration", "schedule:\n  every: 5 minutes\n",
     ["job.cron.yaml:2: /schedule/every: invalid duration '5 minutes'",
      "fix: write a duration such as 500ms"]),
    ("too_short", "schedule: {every: 500ms}\n",
     ["job.cron.yaml:1: /schedule/every: interval '500ms' is shorter than 1s"]),
    ("bad_policy", "schedule: {every: 1m}\ncatchUp: sometimes\n",
     ["job.cron.yaml:2: /catchUp: invalid value 'sometimes'",
      'fix: one of: "none", "latest", "all"']),
    ("max_without_all", "schedule: {every: 1m}\nmaxCatchUp: 5\n",
     ["job.cron.yaml:2: /maxCatchUp: maxCatchUp only applies to catchUp: all",
      "fix: remove maxCatchUp, or set catchUp: all"]),
    ("series_without_delays", "schedule: {every: 1m}\npolicies:\n  retry: {strategy: series}\n",
     ["job.cron.yaml:3: /policies/retry: the series strategy needs 'delays'"]),
    ("reactor_policy", "schedule: {every: 1m}\npolicies:\n  debounce: 1s\n",
     ["job.cron.yaml:3: /policies/debounce: unknown key 'debounce'"]),
    ("no_schedule", "name: job\n",
     ["job.cron.yaml:1: /: 'schedule' is a required property", "fix: add the missing key"]),
    ("not_a_mapping", "- schedule\n",
     ["job.cron.yaml:1: /: a cron definition must be a mapping"]),
]


@pytest.mark.parametrize(("text", "expect"), [(t, e) for _, t, e in ERRORS],
                         ids=[i for i, _, _ in ERRORS])
def test_invalid_cron_definitions_are_reported_and_nothing_is_written(
        tmp_path: Path, text: str, expect: list[str]) -> None:
    write_files(tmp_path, {"schemas/users.reactor.yaml": REACTOR, "schemas/job.cron.yaml": text})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 1, result.text
    for part in expect:
        assert part in result.err, f"{part!r} not in:\n{result.err}"
    assert not (tmp_path / "app").exists()


def test_problems_of_reactors_and_cron_jobs_are_reported_together(tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/users.reactor.yaml": REACTOR + "colection: x\n",
                           "schemas/job.cron.yaml": "schedule: {every: 1m}\ncatchup: all\n"})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 1
    assert "2 problem(s)" in result.err
    assert "/colection" in result.err and "/catchup" in result.err


def test_a_cron_job_may_not_share_a_name_or_handler_module_with_a_reactor(
        tmp_path: Path) -> None:
    write_files(tmp_path, {"schemas/users.reactor.yaml": REACTOR,
                           "schemas/a.cron.yaml": "name: users\nschedule: {every: 1m}\n",
                           "schemas/b.cron.yaml": "name: Users-\nschedule: {every: 1m}\n"})
    result = reactgen(tmp_path, "build", "schemas", "--out", "app")
    assert result.code == 1
    assert ("a.cron.yaml:1: /name: cron job 'users' has the same name as reactor 'users' "
            "defined in users.reactor.yaml") in result.err
    assert "cron job 'Users-' maps to the same Python module 'users' as" in result.err
    assert "fix: give one of them a different 'name'" in result.err
