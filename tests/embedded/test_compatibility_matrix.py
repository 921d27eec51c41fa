"""The compatibility matrix in docs/embedded-server.md is generated from the server itself.

``runtime.embedded.compatibility`` lists MongoDB 7.0's commands, operators, stages and
expressions and computes each one's state from the command table and the engine's
registries. These tests keep the page current and check the claims through a driver: a
command the matrix calls supported is not answered CommandNotFound (59), and one it calls
refused is; an expression it calls supported is not "Unrecognized expression" (168).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database
from pymongo.errors import OperationFailure

from runtime.embedded import compatibility
from runtime.embedded.compatibility import State

PAGE = Path(__file__).resolve().parents[2] / "docs" / "embedded-server.md"


def test_the_page_holds_the_current_matrix() -> None:
    text = PAGE.read_text(encoding="utf-8")
    assert compatibility.updated_page(text) == text, (
        "docs/embedded-server.md is out of date: run "
        "`python -m runtime.embedded.compatibility --write docs/embedded-server.md`")


def _commands(state: State) -> list[str]:
    registered = compatibility._registered()
    return [name for names in compatibility.COMMANDS_70.values() for name in names
            if compatibility.state_of("command", name, registered)[0] is state]


def _code(db: Database[dict[str, Any]], body: dict[str, Any]) -> int | None:
    try:
        db.command(body)
    except OperationFailure as exc:
        return exc.code
    return None


@pytest.mark.embedded_only
def test_commands_the_matrix_calls_supported_are_known_to_the_server(
        db: Database[dict[str, Any]]) -> None:
    """Sent with a dummy argument, none answers CommandNotFound (59)."""
    skip = {"shutdown", "endSessions", "killAllSessions", "killAllSessionsByPattern",
            "dropDatabase", "configureFailPoint", "logout", "fsync"}
    unknown = [name for name in _commands(State.SUPPORTED) + _commands(State.PARTIAL)
               if name not in skip and _code(db, {name: "matrix_probe"}) == 59]
    assert not unknown


@pytest.mark.embedded_only
def test_commands_the_matrix_calls_refused_answer_command_not_found(
        db: Database[dict[str, Any]]) -> None:
    """mongod's answer to a command it does not have: CommandNotFound (59)."""
    answered = [name for name in _commands(State.REFUSED)
                if _code(db, {name: "matrix_probe"}) != 59]
    assert not answered


@pytest.mark.embedded_only
def test_expressions_the_matrix_calls_supported_are_recognised(
        db: Database[dict[str, Any]]) -> None:
    registered = compatibility._registered()
    db.probe.insert_one({"_id": 1})
    unrecognised = []
    for name in compatibility.EXPRESSIONS_70:
        if compatibility.state_of("expression", name, registered)[0] is State.REFUSED:
            continue
        try:
            list(db.probe.aggregate([{"$project": {"x": {name: []}}}]))
        except OperationFailure as exc:
            if exc.code == 168 or "Unrecognized expression" in str(exc):
                unrecognised.append(name)
    assert not unrecognised
