"""``runtime db``: run the embedded server from the command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from runtime.embedded.state import ServerConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime db``."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; use 0.0.0.0 only on purpose)")
    parser.add_argument("--port", type=int, default=27017,
                        help="port to listen on; 0 picks a free one (default 27017)")
    storage = parser.add_mutually_exclusive_group()
    storage.add_argument("--dbpath", help="directory for durable data (write-ahead log + "
                         "snapshot); acknowledged writes survive a kill")
    storage.add_argument("--in-memory", action="store_true",
                         help="keep everything in memory (the default when --dbpath is absent)")
    parser.add_argument("--oplog-size-mb", type=float, default=64.0,
                        help="size of the change-stream history kept for resuming (default 64)")
    parser.add_argument("--enable-test-commands", action="store_true",
                        help="allow configureFailPoint (fault injection for tests only)")
    parser.add_argument("--fsync", action="store_true",
                        help="fsync the write-ahead log on every commit (survives power loss, "
                        "slower); without it writes survive a process kill")
    parser.add_argument("--log-level", default="INFO", help="stderr log level (default INFO)")


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit code."""
    from runtime.embedded.server import run

    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.port < 0 or args.port > 65535:
        print(f"runtime db: --port must be between 0 and 65535, got {args.port}", file=sys.stderr)
        return 2
    if args.oplog_size_mb <= 0:
        print("runtime db: --oplog-size-mb must be positive", file=sys.stderr)
        return 2
    config = ServerConfig(host=args.host, port=args.port, dbpath=args.dbpath,
                          oplog_size_mb=args.oplog_size_mb,
                          enable_test_commands=args.enable_test_commands, fsync=args.fsync,
                          argv=["runtime", "db", *argv])
    try:
        asyncio.run(run(config))
    except OSError as exc:
        print(f"runtime db: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. "
              "Choose another --port (0 picks a free one).", file=sys.stderr)
        return 1
    return 0
