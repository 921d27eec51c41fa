"""The statuses a task document goes through (``status`` field; see docs/architecture.md)."""

from __future__ import annotations

PENDING = "pending"
PROCESSING = "processing"
PROCESSING_DIRTY = "processing_dirty"
COMPLETED = "completed"
FAILED = "failed"
SKIPPED = "skipped"
RUNNING = [PROCESSING, PROCESSING_DIRTY]
