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
from pathlib import Path

from runtime.embedded.auth import is_loopback_host
from runtime.embedded.state import ServerConfig
from runtime.embedded.users_file import UsersFileError, load_users, permission_warning

log = logging.getLogger("runtime.embedded")


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


def _users_file(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file; give a JSON or YAML list of "
                                         "{user, db, password, roles}")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime db``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1); a non-loopback address "
                        "needs --auth or --allow-unauthenticated-remote")
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
    security = parser.add_argument_group("security")
    security.add_argument("--auth", action="store_true",
                          help="require SCRAM-SHA-256/SCRAM-SHA-1 authentication and role "
                          "checks for every command (the first user may be created with "
                          "createUser from localhost)")
    security.add_argument("--users-file", type=_users_file, metavar="PATH",
                          help="JSON or YAML list of {user, db, password, roles} to create at "
                          "start-up (kept in memory; keep the file private: chmod 600)")
    security.add_argument("--allow-unauthenticated-remote", action="store_true",
                          help="allow a non-loopback --host without --auth (anyone who can "
                          "reach the port gets full access)")


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code.

    Start-up failures (port in use, unusable ``--dbpath`` or ``--users-file``, a non-loopback
    ``--host`` without ``--auth``) print one ``runtime db: ...`` line on stderr and return 1;
    stdout then stays empty.
    """
    from runtime.embedded.server import StartupError, run

    if not args.auth and not args.allow_unauthenticated_remote \
            and not is_loopback_host(args.host):
        print(f"runtime db: refusing to listen on {args.host} without authentication (anyone "
              "who can reach it would get full access); add --auth (with --users-file or "
              "createUser), or pass --allow-unauthenticated-remote if the network is trusted",
              file=sys.stderr)
        return 1
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    users = []
    if args.users_file is not None:
        warning = permission_warning(args.users_file)
        if warning is not None:
            log.warning("%s", warning)
        try:
            users = load_users(args.users_file)
        except UsersFileError as exc:
            print(f"runtime db: {exc}", file=sys.stderr)
            return 1
        if not args.auth:
            log.warning("--users-file %s: without --auth its users may authenticate but "
                        "nothing requires them to; add --auth to enforce access control",
                        args.users_file)
    config = ServerConfig(host=args.host, port=args.port, dbpath=args.dbpath,
                          oplog_size_mb=args.oplog_size_mb,
                          enable_test_commands=args.enable_test_commands, fsync=args.fsync,
                          argv=["runtime", "db", *argv], auth=args.auth, users=users)
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
