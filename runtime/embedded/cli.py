"""``runtime db``: run the embedded server from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import time
from collections.abc import Callable

from runtime.embedded.state import ServerConfig


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {port}")
    return port


def _positive_size(text: str) -> float:
    try:
        size = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(size) or size <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return size


def _log_level(text: str) -> str:
    level = text.upper()
    if not isinstance(logging.getLevelName(level), int):
        raise argparse.ArgumentTypeError(
            f"unknown level {text!r} (use DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return level


def _dbpath(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime db``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; use 0.0.0.0 only on purpose)")
    parser.add_argument("--port", type=_port, default=27017,
                        help="port to listen on; 0 picks a free one (default 27017)")
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument("--dbpath", type=_dbpath,
                         help="directory for durable data (write-ahead log + snapshot); "
                         "acknowledged writes survive a kill")
    storage.add_argument("--in-memory", action="store_true",
                         help="keep everything in memory (the default when --dbpath is absent)")
    parser.add_argument("--oplog-size-mb", type=_positive_size, default=64.0,
                        help="size of the change-stream history kept for resuming (default 64)")
    parser.add_argument("--enable-test-commands", action="store_true",
                        help="allow configureFailPoint (fault injection for tests only)")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync the write-ahead log on every commit (survives power loss, "
                        "slower); without it writes survive a process kill")
    parser.add_argument("--checkpoint-mb", type=_positive_size, default=64.0,
                        help="with --dbpath, write a snapshot (in the background) once the "
                        "write-ahead log exceeds this size or the last snapshot's, whichever "
                        "is larger (default 64)")
    parser.add_argument("--log-level", type=_log_level, default="INFO",
                        help="stderr log level (default INFO)")


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code.

    Start-up failures (port in use, unusable ``--dbpath``) print one ``runtime db: ...`` line on
    stderr and return 1; stdout then stays empty.
    """
    from runtime.embedded.server import StartupError, run

    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = ServerConfig(host=args.host, port=args.port, dbpath=args.dbpath,
                          oplog_size_mb=args.oplog_size_mb,
                          enable_test_commands=args.enable_test_commands, fsync=args.fsync,
                          argv=["runtime", "db", *argv])
    try:
        _run_profiled(lambda: asyncio.run(run(config, int(args.checkpoint_mb * 1024 * 1024))))
    except StartupError as exc:
        print(f"runtime db: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"runtime db: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


#: When set, the server runs under cProfile and writes its statistics to this file on shutdown
#: (used by ``bench/server_workload.py --profile``).
PROFILE_ENV = "REACTGEN_EMBEDDED_PROFILE"


def _run_profiled(serve: Callable[[], None]) -> None:
    """Run ``serve``, under cProfile when :data:`PROFILE_ENV` names an output file."""
    target = os.environ.get(PROFILE_ENV)
    if not target:
        serve()
        return
    import cProfile

    profiler = cProfile.Profile(time.process_time)
    try:
        profiler.runcall(serve)
    finally:
        profiler.dump_stats(target)
