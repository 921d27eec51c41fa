"""Build errors that name the file, the place in it, what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one definition."""

    file: Path
    pointer: str
    message: str
    hint: str = ""
    line: int | None = None
    in_code: bool = False
    """The file is Python code (no JSON pointer is shown)."""

    def render(self, root: Path | None = None) -> str:
        """``file:line: /pointer: message (hint)`` for terminals and CI logs."""
        try:
            shown = self.file.relative_to(root) if root else self.file
        except ValueError:
            shown = self.file
        where = f"{shown}:{self.line}" if self.line else f"{shown}"
        if self.in_code:
            text = f"{where}: {self.message}"
        else:
            text = f"{where}: {self.pointer or '/'}: {self.message}"
        if self.hint:
            text += f"\n    fix: {self.hint}"
        return text


class BuildError(Exception):
    """The definitions cannot be compiled; nothing was written."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems
