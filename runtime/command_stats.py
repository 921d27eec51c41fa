"""Counting the database commands an instance sends (PyMongo command monitoring).

Enabled with ``REACTGEN_COMMAND_STATS=<file>``: at shutdown the counts per command name are
written there as JSON. The benchmark uses it to report database commands per completed task.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pymongo import monitoring


class CommandCounter(monitoring.CommandListener):
    """Counts started commands by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        """Count one command."""
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        """Nothing to do."""

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        """Nothing to do."""

    def write(self, path: str) -> None:
        """Save the counts as JSON."""
        Path(path).write_text(json.dumps(dict(sorted(self.counts.items())), indent=2),
                              encoding="utf-8")
