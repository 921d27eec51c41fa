"""The ``reactgen`` command: build, check, validate and scaffold reactor definitions.

Exit codes: 0 success; 1 the definitions have problems (each printed with file, line, JSON
pointer and a fix); 2 wrong usage; 3 ``check`` found ``generated/`` out of date.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import metadata
from pathlib import Path

from generator.errors import BuildError

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_STALE = 3


def _print_problems(exc: BuildError, project: Path) -> None:
    print(f"reactgen: {len(exc.problems)} problem(s); nothing was written:", file=sys.stderr)
    for problem in exc.problems:
        print("  " + problem.render(project).replace("\n", "\n  "), file=sys.stderr)


def _allowed(args: argparse.Namespace) -> tuple[Path, ...]:
    """Folders outside the schemas folder that ``$ref`` may read (``--allow-ref-outside``)."""
    return tuple(Path(folder) for folder in args.allow_ref_outside or ())


def _add_ref_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--allow-ref-outside", action="append", metavar="DIR", default=[],
                         help="also let schema $refs read files in DIR (repeatable); by "
                         "default they must stay inside the schemas folder")


def _cache_dir(project: Path) -> Path:
    return project / ".reactgen" / "cache" / "models"


def cmd_build(args: argparse.Namespace) -> int:
    """``reactgen build schemas/ [--out generated]``."""
    from generator.build import build

    project = Path.cwd()
    started = time.perf_counter()
    result = build(Path(args.schemas), Path(args.out), project, _cache_dir(project),
                   force=args.force, allow_ref_outside=_allowed(args))
    elapsed = (time.perf_counter() - started) * 1000
    if result.up_to_date:
        print(f"reactgen: {args.out} is up to date ({elapsed:.0f} ms)")
    else:
        for rel in result.written:
            print(f"  wrote {Path(args.out).name}/{rel}")
        print(f"reactgen: built {len(result.reactors)} reactor(s) into {args.out} "
              f"({len(result.written)} file(s) changed, {elapsed:.0f} ms)")
    for warning in result.warnings:
        print(f"reactgen: warning: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """``reactgen check schemas/``: non-zero when generated/ is stale."""
    from generator.build import stale_files

    project = Path.cwd()
    stale = stale_files(Path(args.schemas), Path(args.out), project, _cache_dir(project),
                        _allowed(args))
    if stale:
        print(f"reactgen: {args.out} is out of date; run `reactgen build {args.schemas}`:",
              file=sys.stderr)
        for line in stale:
            print(f"  {line}", file=sys.stderr)
        return EXIT_STALE
    print(f"reactgen: {args.out} is up to date")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """``reactgen validate schemas/``: only validate."""
    from generator.cron import load_all

    reactors, crons = load_all(Path(args.schemas), _allowed(args))
    print(f"reactgen: {len(reactors) + len(crons)} definition(s) valid")
    return EXIT_OK


def cmd_new(args: argparse.Namespace) -> int:
    """``reactgen new <name> --collection <c>``: scaffold a definition (and a schema)."""
    from generator.scaffold import scaffold

    for path in scaffold(args.name, args.collection, Path(args.dir)):
        print(f"  created {path}")
    return EXIT_OK


def _version() -> str:
    try:
        return metadata.version("reactgen")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``reactgen``."""
    parser = argparse.ArgumentParser(
        prog="reactgen",
        description="Compile reactor definitions (schemas/**/*.reactor.yaml) into a typed "
        "Python package. Exit codes: 0 ok, 1 invalid definitions, 2 usage, 3 stale output.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="generate models, reactors, pipelines, indexes")
    build.add_argument("schemas", help="folder with *.reactor.yaml files (or one file)")
    build.add_argument("--out", default="generated", help="output package folder")
    build.add_argument("--force", action="store_true", help="rebuild even if up to date")
    _add_ref_option(build)
    build.set_defaults(func=cmd_build)
    check = commands.add_parser("check", help="exit 3 if the output is out of date (for CI)")
    check.add_argument("schemas")
    check.add_argument("--out", default="generated")
    _add_ref_option(check)
    check.set_defaults(func=cmd_check)
    validate = commands.add_parser("validate", help="validate definitions only")
    validate.add_argument("schemas")
    _add_ref_option(validate)
    validate.set_defaults(func=cmd_validate)
    new = commands.add_parser("new", help="scaffold a reactor definition")
    new.add_argument("name", help="reactor name (its permanent task id)")
    new.add_argument("--collection", required=True, help="source collection")
    new.add_argument("--dir", default="schemas", help="where to write (default schemas/)")
    new.set_defaults(func=cmd_new)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``reactgen`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BuildError as exc:
        _print_problems(exc, Path.cwd())
        return EXIT_INVALID
    return code
