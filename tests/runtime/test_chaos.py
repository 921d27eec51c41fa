"""A short fault-injection run (``bench/chaos.py``): nothing lost, nothing stuck, no crash.

The bench runs three ``runtime serve`` instances and an embedded server of its own (with
``--dbpath``) under a writer, and applies at least one of each fault: SIGKILL of a random
instance, SIGKILL of the leader, SIGSTOP of the leader beyond its lease (then SIGCONT: it must
step down) and SIGKILL of the server (restarted on the same dbpath and port). Short leases keep
the run at about half a minute. Failover times are printed by the bench, never asserted here
(machine noise); duplicate executions are allowed (handlers run at least once).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_harness import REPO

pytestmark = pytest.mark.embedded_only  # it kills the server


def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    argv = [sys.executable, str(REPO / "bench" / "chaos.py"), "--json",
            "--instances", "3", "--duration", "20", "--seed", "20261201",
            "--interval", "1", "3", "--leader-ttl-ms", "2000", "--task-lease-ms", "5000",
            "--quiesce-timeout", "90", "--max-failover-median", "1e9",
            "--workdir", str(tmp_path / "chaos")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=280)
    context = (f"exit status {result.returncode}; logs in {tmp_path / 'chaos'}\n"
               f"stderr:\n{result.stderr[-6000:]}\nstdout:\n{result.stdout[-6000:]}")
    assert result.stdout.lstrip().startswith("{"), context
    summary = json.loads(result.stdout)

    # Every kind of fault happened and had its effect.
    for kind in ("kill", "kill-leader", "pause-leader", "kill-server"):
        assert summary["faults"].get(kind, 0) >= 1, (kind, context)
    assert len(summary["failovers"]) >= 2, context
    assert all(f["to"] is not None for f in summary["failovers"]), context
    assert summary["stepdowns_s"] and None not in summary["stepdowns_s"], context
    assert summary["server_restarts"] >= 1 and summary["server_crashes"] == [], context
    assert summary["documents"] > 0 and summary["executions"] >= summary["documents"], context

    assert summary["lost"] == 0, context
    assert summary["stuck"] == 0, context
    assert summary["crashes"] == 0, context
    assert summary["acknowledged_writes_lost"] == 0, context
    assert summary["problems"] == [] and result.returncode == 0, context
