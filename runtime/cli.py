"""The ``runtime`` command: ``runtime serve`` (run reactors), ``runtime db`` (embedded server)."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from runtime import serve_cli
from runtime.dashboard import cli as dashboard_cli
from runtime.embedded import cli as db_cli
from runtime.management import cli as management_cli


def _version() -> str:
    try:
        return metadata.version("reactgen")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``runtime``."""
    parser = argparse.ArgumentParser(prog="runtime", description="reactgen runtime")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    db = commands.add_parser("db", help="run the embedded MongoDB-compatible server",
                             description="Run the embedded MongoDB-compatible server. The first "
                             "line on stdout is its connection URI; logs go to stderr.")
    db_cli.add_arguments(db)
    serve = commands.add_parser("serve", help="run the reactors of a generated application",
                                description="Plan tasks from change streams and execute "
                                "handlers. Every flag also reads the environment variable "
                                "shown.")
    serve_cli.add_arguments(serve)
    management_cli.add_commands(commands)
    dashboard_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``runtime`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    if args.command == "db":
        return db_cli.run_from_args(args, args_list[1:])
    if args.command == "serve":
        return serve_cli.run_from_args(args)
    if args.command in management_cli.COMMANDS:
        return management_cli.run_from_args(args)
    if args.command == "dashboard":
        return dashboard_cli.run_from_args(args)
    return 2
