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


def _subcommand_parser(parser: argparse.ArgumentParser,
                       command: str) -> argparse.ArgumentParser:
    """The parser of ``runtime <command>`` (``parser`` itself if there is none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(command)
            if isinstance(chosen, argparse.ArgumentParser):
                return chosen
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``runtime`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(args_list)
    if unknown:
        # argparse would report them with the usage of ``runtime``; the user needs the usage
        # of the subcommand they typed (exits 2).
        _subcommand_parser(parser, args.command).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "db":
        return db_cli.run_from_args(args, args_list[1:])
    if args.command == "serve":
        return serve_cli.run_from_args(args)
    if args.command in management_cli.COMMANDS:
        return management_cli.run_from_args(args)
    if args.command == "dashboard":
        return dashboard_cli.run_from_args(args)
    return 2
