"""The management API of a reactgen deployment: tasks, reactors, instances, explain, streams.

Built on PyMongo only, so it works against any MongoDB (and the embedded server)::

    from pymongo import AsyncMongoClient
    from runtime.app_loader import load_app
    from runtime.management import Management, TaskSelection, TaskStatus

    app = load_app("generated")
    management = Management(AsyncMongoClient(uri)["app"], app.reactors)
    failed = await management.list_tasks(TaskSelection(reactor="sync_paid_orders",
                                                       statuses=(TaskStatus.FAILED,)))
    await management.retry_tasks(TaskSelection(reactor="sync_paid_orders",
                                               statuses=(TaskStatus.FAILED,)))

:class:`ManagementSync` has the same methods, blocking. ``runtime tasks|reactors|explain|...``
(``runtime/management/cli.py``) is the command line on top. Reference: docs/operations.md.
"""

from runtime.management.errors import (
    InvalidSelection,
    ManagementError,
    NotFound,
    UnknownReactor,
)
from runtime.management.explain import ExplainState, Explanation
from runtime.management.facade import Management, ManagementSync
from runtime.management.instances import LIVE_WINDOW, ClusterState, InstanceInfo, LeaderInfo
from runtime.management.reactors import LastError, PauseState, ReactorSummary, ScanState
from runtime.management.status import TaskStatus
from runtime.management.streams import StreamState
from runtime.management.tasks import (
    HistoryEntry,
    Lease,
    PlanningError,
    RetryResult,
    TaskPage,
    TaskRecord,
    TaskSelection,
    TaskSort,
)

__all__ = [
    "LIVE_WINDOW",
    "ClusterState",
    "ExplainState",
    "Explanation",
    "HistoryEntry",
    "InstanceInfo",
    "InvalidSelection",
    "LastError",
    "LeaderInfo",
    "Lease",
    "Management",
    "ManagementError",
    "ManagementSync",
    "NotFound",
    "PauseState",
    "PlanningError",
    "ReactorSummary",
    "RetryResult",
    "ScanState",
    "StreamState",
    "TaskPage",
    "TaskRecord",
    "TaskSelection",
    "TaskSort",
    "TaskStatus",
    "UnknownReactor",
]
