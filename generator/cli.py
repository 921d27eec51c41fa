"""The ``reactgen`` command: build, check, validate and scaffold reactor definitions.

Exit codes: 0 success (warnings, if any, are printed to stderr); 1 the definitions (or the
handler modules) have problems (each printed with file, line, JSON pointer and a fix); 2 wrong
usage (including a definitions folder that does not exist); 3 ``check`` found ``generated/``
out of date.
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


def _missing_input(schemas: str) -> bool:
    """Print ``no such folder`` (exit code 2) when the definitions folder does not exist."""
    if Path(schemas).exists():
        return False
    kind = "file" if schemas.endswith((".yaml", ".yml", ".json")) else "folder"
    print(f"reactgen: no such {kind}: {schemas}", file=sys.stderr)
    print(f"    fix: pass the folder with your *.reactor.yaml files (relative to {Path.cwd()}), "
          "or create one with `reactgen new <name> --collection <collection>`", file=sys.stderr)
    return True


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        print("reactgen: warning: " + warning.replace("\n", "\n  "), file=sys.stderr)


def _cache_dir(project: Path) -> Path:
    return project / ".reactgen" / "cache" / "models"


def cmd_build(args: argparse.Namespace) -> int:
    """``reactgen build schemas/ [--out generated]``."""
    from generator.build import build

    if _missing_input(args.schemas):
        return EXIT_USAGE
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
        for rel in result.removed:
            print(f"  removed {Path(args.out).name}/{rel}")
        print(f"reactgen: built {len(result.reactors)} reactor(s) into {args.out} "
              f"({len(result.written) + len(result.removed)} file(s) changed, {elapsed:.0f} ms)")
    _print_warnings(result.warnings)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    """``reactgen check schemas/``: non-zero when generated/ is stale."""
    from generator.build import stale_files

    if _missing_input(args.schemas):
        return EXIT_USAGE
    project = Path.cwd()
    warnings: list[str] = []
    stale = stale_files(Path(args.schemas), Path(args.out), project, _cache_dir(project),
                        _allowed(args), warnings)
    _print_warnings(warnings)
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

    if _missing_input(args.schemas):
        return EXIT_USAGE
    reactors, crons = load_all(Path(args.schemas), _allowed(args))
    _print_warnings([w.render(Path.cwd()) for r in reactors for w in r.warnings])
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
