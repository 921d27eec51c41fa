"""Settings of ``runtime serve``: every flag also reads an environment variable."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

DEFAULT_DATABASE = "app"


def default_instance_id() -> str:
    """``host-pid-random``: unique per process, readable in logs and lease documents."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class RuntimeSettings:
    """How one runtime instance runs (see ``runtime serve --help`` for the flags)."""

    app: str = "generated"
    mongodb_uri: str | None = None
    database: str = DEFAULT_DATABASE
    concurrency: int = 10
    instance_id: str = field(default_factory=default_instance_id)
    leader_ttl_ms: int = 3_000
    task_lease_ms: int = 30_000
    shutdown_timeout_ms: int = 30_000
    data_dir: str = ".reactgen"
    batch_max: int = 1000
    idle_poll_ms: int = 5_000
    log_level: str = "INFO"
    command_stats_file: str | None = None
    hooks: str | None = None
    middleware: str | None = None
    dashboard_port: int | None = None
    dashboard_host: str = "127.0.0.1"
    dashboard_token: str | None = None
    log_format: str = "text"
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_scope: str = "cluster"
    """``local`` (this instance's metrics) or ``cluster`` (also the cluster-wide gauges)."""
    metrics_refresh_ms: int = 5_000
    db_port: int | None = None
    """Port of the embedded server (without ``mongodb_uri``); ``None``: the port recorded in
    ``<data_dir>/uri`` by the last start if it is free, else any free port; 0: any free port."""
    connect_timeout_ms: int = 10_000
    """How long start-up waits for the database to answer before giving up."""
    reload: bool = False
    """Development loop: rebuild on definition changes, restart on handler changes (see
    :mod:`runtime.reload`)."""
    schemas: str | None = None
    """With ``reload``: the definitions folder (``None``: ``schemas`` if it exists)."""
    eager_dispatch: bool = True
    """The planner hands new tasks straight to this instance's workers when they have room
    (:mod:`runtime.eager_dispatch`); off: every task is claimed in a claim round."""
    planner_partitions: int = 1
    """Change-stream planning is split into this many partitions by a hash of the source
    ``_id``, spread over the live instances (1: the leader plans everything)."""

    @property
    def leader_renew_ms(self) -> int:
        """Leadership is renewed three times per TTL, on its own task."""
        return max(50, self.leader_ttl_ms // 3)

    @property
    def task_renew_ms(self) -> int:
        """Task leases are renewed five times per lease while a handler runs."""
        return max(50, self.task_lease_ms // 5)


ENVIRONMENT = {
    "app": "REACTGEN_APP",
    "mongodb_uri": "MONGODB_URI",
    "database": "REACTGEN_DATABASE",
    "concurrency": "REACTGEN_CONCURRENCY",
    "instance_id": "REACTGEN_INSTANCE_ID",
    "leader_ttl_ms": "REACTGEN_LEADER_TTL_MS",
    "task_lease_ms": "REACTGEN_TASK_LEASE_MS",
    "shutdown_timeout_ms": "REACTGEN_SHUTDOWN_TIMEOUT_MS",
    "idle_poll_ms": "REACTGEN_IDLE_POLL_MS",
    "data_dir": "REACTGEN_DATA_DIR",
    "log_level": "REACTGEN_LOG_LEVEL",
    "command_stats_file": "REACTGEN_COMMAND_STATS",
    "hooks": "REACTGEN_HOOKS",
    "middleware": "REACTGEN_MIDDLEWARE",
    "dashboard_port": "REACTGEN_DASHBOARD_PORT",
    "dashboard_host": "REACTGEN_DASHBOARD_HOST",
    "dashboard_token": "REACTGEN_DASHBOARD_TOKEN",
    "log_format": "REACTGEN_LOG_FORMAT",
    "metrics_port": "REACTGEN_METRICS_PORT",
    "metrics_host": "REACTGEN_METRICS_HOST",
    "metrics_scope": "REACTGEN_METRICS_SCOPE",
    "metrics_refresh_ms": "REACTGEN_METRICS_REFRESH_MS",
    "planner_partitions": "REACTGEN_PLANNER_PARTITIONS",
    "eager_dispatch": "REACTGEN_EAGER_DISPATCH",
    "db_port": "REACTGEN_DB_PORT",
    "connect_timeout_ms": "REACTGEN_CONNECT_TIMEOUT_MS",
    "reload": "REACTGEN_RELOAD",
    "schemas": "REACTGEN_SCHEMAS",
}
