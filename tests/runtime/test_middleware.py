"""The extension point: user middleware (``--middleware``), failures people can debug (trimmed
tracebacks in the log and the task), JSON logs, and OpenTelemetry spans."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from conftest import AppBuilder, RuntimeFactory
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel
from pymongo.database import Database
from scenario import definition, handler, start
from support import wait_until

from runtime.outcome import Outcome, OutcomeKind
from runtime.reactor import Policies, ReactorSpec
from runtime.tracing import TracingMiddleware

Doc = dict[str, Any]
RETRY = "      retry: {strategy: fixed, interval: 200ms, maxAttempts: 2}\n"
FAILING = handler("record").replace("        MARK_COMPLETED_EARLY\n", "").replace(
    "        if thing.block:",
    "        if thing.note == 'fail':\n            check_inventory(thing.id)\n"
    "        if thing.block:") + """

    def check_inventory(sku: str) -> None:
        raise LookupError(f"no inventory for {sku}")
"""
RECORDER = '''
import json, os
from runtime.middleware import Middleware


class Recorder(Middleware):
    def after_execution(self, reactor, task, outcome):
        with open(os.environ["RECORD_TO"], "a") as out:
            out.write(json.dumps({"reactor": reactor.name, "source": task["sourceId"],
                                  "outcome": outcome.kind.value}) + "\\n")

    def on_planned(self, reactor, tasks):
        with open(os.environ["RECORD_TO"], "a") as out:
            out.write(json.dumps({"planned": reactor, "tasks": tasks}) + "\\n")
'''


def test_user_middleware_sees_every_outcome_and_failures_carry_user_tracebacks(
        make_app: AppBuilder, start_runtime: RuntimeFactory, db: Database[Doc]) -> None:
    app = make_app({"record": definition(RETRY)}, {"record": FAILING})
    (app.root / "observe.py").write_text(RECORDER, encoding="utf-8")
    record = app.root / "outcomes.jsonl"
    a = start(start_runtime, app, "a", "--middleware", "observe:Recorder",
              "--log-format", "json", env={"RECORD_TO": str(record)}, wait=False)
    a.wait_for_log(r'"event": "runtime\.started"')
    db.things.insert_many([{"_id": "ok", "n": 1}, {"_id": "bad", "n": 1, "note": "fail"}])
    failed = wait_until(lambda: db.things_tasks.find_one({"sourceId": "bad",
                                                          "status": "failed"}), timeout=15)
    # The traceback is the user's: the handler and the function it called, not the runtime.
    trace = failed["lastTraceback"]
    assert "check_inventory" in trace and "LookupError: no inventory for bad" in trace
    assert "runtime/worker.py" not in trace and "asyncio" not in trace
    assert [h.get("traceback") == trace for h in failed["history"]] == [True, True]
    # The failed status is written before the middleware hears of it: wait for its line too
    # (the planning lines come in one or more batches, so their number varies).

    def recorded() -> list[dict[str, Any]]:
        return [json.loads(line) for line in record.read_text().splitlines()] \
            if record.exists() else []

    wait_until(lambda: sum("outcome" in s for s in recorded()) >= 3)
    seen = recorded()
    outcomes = sorted((s["source"], s["outcome"]) for s in seen if "outcome" in s)
    assert outcomes == [("bad", "failed"), ("bad", "retry"), ("ok", "completed")]
    assert any(s.get("planned") == "record" for s in seen)
    # JSON logs: every line is an object; the failure's line carries the traceback.
    lines = [json.loads(line) for line in a.log().splitlines() if line.strip()]
    finished = [entry for entry in lines if entry.get("event") == "task.finished"
                and entry.get("source_id") == "bad"]
    assert finished and all("check_inventory" in entry["traceback"] for entry in finished)
    assert finished[-1]["final"] is True and finished[-1]["level"] == "WARNING"


class Thing(BaseModel):
    """A stand-in document model."""


def _reactor() -> ReactorSpec:
    return ReactorSpec(name="record", collection="things", database=None, model=Thing,
                       watched_model=Thing, filter={}, watch=None, pipeline=[],
                       policies=Policies(), handler="x:handle", trigger_fingerprint="f",
                       source="defs/record.reactor.yaml")


def test_tracing_spans_per_execution_and_planning_batch() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    tracing = TracingMiddleware(tracer)
    reactor = _reactor()
    task = {"_id": "t1", "sourceId": "s1", "attempts": 2}
    ctx = SimpleNamespace(held=SimpleNamespace(task_id="t1"))

    async def handler_body() -> None:
        with tracer.start_as_current_span("erp.call"):
            pass

    async def scenario() -> None:
        tracing.before_execution(reactor, task)
        await tracing.around_execution(reactor, ctx, handler_body)
        tracing.after_execution(reactor, task, Outcome(OutcomeKind.RETRY, 0.01,
                                                       error="ValueError: boom"))

        async def plan() -> None:
            return None

        await tracing.around_planning("app", 3, plan)

    asyncio.run(scenario())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    execution = spans["reactgen.execute record"]
    assert execution.attributes == {
        "reactgen.reactor": "record", "reactgen.task_id": "t1", "reactgen.source_id": "s1",
        "reactgen.attempt": 2, "reactgen.outcome": "retry", "reactgen.error": "ValueError: boom"}
    assert execution.status.status_code.name == "ERROR"
    assert spans["erp.call"].parent is not None
    assert spans["erp.call"].parent.span_id == execution.context.span_id
    assert spans["reactgen.plan"].attributes == {"reactgen.database": "app",
                                                 "reactgen.events": 3}
