"""The ``reactgen`` command (the build pipeline arrives with the generator issue)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``reactgen`` console script."""
    parser = argparse.ArgumentParser(
        prog="reactgen",
        description="Compile reactor definitions into generated/ (not implemented yet).",
    )
    parser.parse_args(argv)
    parser.error("no commands are implemented yet; the generator is the next milestone")
    return 2
