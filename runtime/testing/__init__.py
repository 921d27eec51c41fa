"""Testing your handlers: without a runtime, and against a real one.

- :func:`run_handler` (and :func:`run_handler_async`) runs one handler on one document with
  the context the worker would build and returns a :class:`HandlerResult`: the outcome the
  worker would record (completed, retry, deferred, skipped, failed) with its delay, due time
  and error. Give it ``database=...`` to let the handler write, then assert on the database.
- :class:`RuntimeHarness` runs the embedded server and one runtime in this process for
  integration tests: insert documents through :attr:`RuntimeHarness.db`, call
  :meth:`RuntimeHarness.wait_until_idle`, assert on the effects and on the task history.
- ``runtime.testing.pytest_plugin`` offers both as pytest fixtures (``reactgen_runtime``).
"""

from __future__ import annotations

from runtime.outcome import Outcome, OutcomeKind
from runtime.testing.handlers import (
    SAME,
    HandlerResult,
    HandlerTestContext,
    NoDatabaseError,
    run_handler,
    run_handler_async,
    would_trigger,
)
from runtime.testing.harness import NotIdleError, RuntimeHarness

__all__ = ["SAME", "HandlerResult", "HandlerTestContext", "NoDatabaseError", "NotIdleError",
           "Outcome", "OutcomeKind", "RuntimeHarness", "run_handler", "run_handler_async",
           "would_trigger"]
