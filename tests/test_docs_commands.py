"""Every ``reactgen``, ``runtime`` and ``dev.py`` command in the user docs is checked against the
real command-line parsers, so the docs cannot drift from the CLIs.

The pages are README.md and docs/*.md except docs/tutorial.md (tests/test_tutorial.py runs that
one end to end). Commands are read from

- fenced blocks whose language is ``sh``, ``bash``, ``shell``, ``console`` or empty (in
  ``console`` blocks only ``$ ``-prefixed lines), and ``$ ``-prefixed lines outside blocks: a
  trailing ``\\`` joins the next line, an indented line starting with ``[``, ``-`` or ``|``
  continues a synopsis, ``# comments``, ``X=y`` assignments, ``export``, ``&&``/``;``, pipes
  (``| jq ...``: only our command is checked) and ``$(...)`` (checked as a command of its own)
  are understood;
- inline code spans starting with one of the commands (`` `runtime serve --app` ``).

Nothing is executed. A command is parsed by ``generator.cli.build_parser()`` /
``runtime.cli.build_parser()``; ``dev.py`` commands must name one of ``dev.COMMANDS``.

- A concrete command (fenced, no placeholders) must parse as the program parses it: subcommands,
  flags, their values (types included) and positional arguments.
- A synopsis (``[--limit 50]``, ``SELECTION``, ``TASK_ID | --reactor NAME``, ``<schemas>``,
  ``...``) and every inline span is checked word by word: each subcommand must exist, each flag
  must exist on that subcommand under its full name, and a flag shown without a value
  (``[--desc]``) must not need one; a flag shown with one inside its brackets (``[--limit 50]``)
  must take one.
- A block marked ``synopsis`` (```` ```sh synopsis ````) claims to show every flag of its
  command: a flag the parser has and the synopsis lacks is reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from generator import cli as generator_cli
from runtime import cli as runtime_cli

ROOT = Path(__file__).resolve().parent.parent
EXECUTED_ELSEWHERE = {"docs/tutorial.md"}  # tests/test_tutorial.py runs it
PAGES = [path.relative_to(ROOT).as_posix()
         for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
         if path.relative_to(ROOT).as_posix() not in EXECUTED_ELSEWHERE]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console", "shell-session", ""}
# Inline spans that start like a command but quote something else (log or error text).
NOT_COMMANDS = {"runtime exited with code 1; ..."}

FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)(.*)$")
PROGRAM = re.compile(r"(?:^|[\s;|&(`])(?:\S*/)?(?:reactgen|runtime|dev\.py)(?=\s|$|`)"
                     r"|python3? -m (?:runtime|generator)\b")
INLINE = re.compile(r"(?<!`)`(?!`)([^`]+)`(?!`)")
INLINE_START = re.compile(r"^(?:\S*/)?(?:reactgen|runtime|python3? -m (?:runtime|generator)"
                          r"|(?:python3? )?(?:\./)?dev\.py)(?:\s|$)")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PREFIXES = {"exec", "nohup", "time", "sudo", "env", "command"}
SEPARATORS = {"&&", "||", ";", "&"}
SUBSTITUTION = "$(…)"
CAPS_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(?::[A-Z0-9_]+)?(?:\[,[A-Z0-9_]+\])?$")
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@dataclass(frozen=True)
class DocCommand:
    """One command line of a page, from the program's name on."""

    page: str
    line: int
    program: str  # "reactgen", "runtime" or "dev.py"
    words: tuple[str, ...]  # after the program
    text: str  # as written
    inline: bool
    complete: bool = False  # a ``synopsis`` block: it shows every flag

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


# --------------------------------------------------------------------------- extraction


def _fenced_lines(text: str) -> Iterator[tuple[str, set[str], int, str]]:
    """(block language, other words of its info string, line number, line) of the lines of
    fenced blocks, and ``$ `` lines outside blocks (language ``console``)."""
    fence: str | None = None
    language = ""
    info: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, language = match.group(2), match.group(3).lower()
                info = set(match.group(4).split())
            elif line.lstrip().startswith("$ "):
                yield "console", set(), number, line
            continue
        if match and match.group(2).startswith(fence) and not (match.group(3)
                                                               + match.group(4).strip()):
            fence = None
            continue
        yield language, info, number, line


def _logical_lines(text: str) -> Iterator[tuple[int, str, bool]]:
    """(first line number, text, in a ``synopsis`` block) of the shell command lines of a page,
    with continuations joined."""
    pending: tuple[int, str] | None = None
    continued = False
    previous_line = -1
    complete = False
    for language, info, number, line in _fenced_lines(text):
        if language not in SHELL_LANGUAGES or "tutorial" in info:
            continue
        stripped = line.strip()
        follows = number == previous_line + 1
        previous_line = number
        if pending is not None and follows and (
                continued or (line[:1].isspace() and stripped[:1] in ("[", "-", "|")
                              and not stripped.startswith("$ "))):
            pending = (pending[0], pending[1] + " " + stripped.removesuffix("\\"))
            continued = stripped.endswith("\\")
            continue
        if pending is not None:
            yield pending[0], pending[1], complete
            pending = None
        complete = "synopsis" in info
        if language == "console" and not stripped.startswith("$ "):
            continue
        stripped = stripped.removeprefix("$ ")
        pending = (number, stripped.removesuffix("\\"))
        continued = stripped.endswith("\\")
    if pending is not None:
        yield pending[0], pending[1], complete


def _inline_spans(text: str) -> Iterator[tuple[int, str]]:
    """(line, span) of the inline code spans outside fenced blocks (a span may wrap lines)."""
    fenced = {number for _, _, number, _ in _fenced_lines(text)}
    lines = text.splitlines()
    prose = "\n".join("" if number in fenced else line
                      for number, line in enumerate(lines, start=1))
    for match in INLINE.finditer(prose):
        # A span may wrap after an alternative's bar: `runtime tasks|reactors|\ninstances`.
        span = re.sub(r"(?<=\S)\|\s+", "|", " ".join(match.group(1).split()))
        if INLINE_START.match(span):
            yield prose.count("\n", 0, match.start()) + 1, span


def _substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each ``$(...)`` replaced by a placeholder word, and the inner commands."""
    inner: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            inner.append(line[i + 2:j - 1])
            out.append(SUBSTITUTION)
            i = j
            continue
        out.append(line[i])
        i += 1
    return "".join(out), inner


def is_placeholder(word: str) -> bool:
    """Whether ``word`` stands for something (a synopsis), rather than being typed as is."""
    return (word in ("...", "…", "|", SUBSTITUTION) or word.startswith(("[", "<", "$"))
            or word.endswith(("]", ">", "...", "…")) or SUBSTITUTION in word
            or (bool(CAPS_PLACEHOLDER.match(word)) and word not in LOG_LEVELS))


def _segments(words: list[str]) -> Iterator[list[str]]:
    """The simple commands of a shell line: split at ``&&``, ``;`` ... and at pipes (a ``|``
    followed by a flag or inside brackets is a synopsis' alternative, not a pipe)."""
    segment: list[str] = []
    depth = 0
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        pipe = (word == "|" and depth <= 0 and following[:1] not in ("-", "[", "")
                and not is_placeholder(following))
        if word in SEPARATORS or pipe:
            yield segment
            segment = []
            continue
        depth += word.count("[") - word.count("]")
        segment.append(word)
    yield segment


def _command(page: str, line: int, words: list[str], text: str, inline: bool,
             complete: bool = False) -> DocCommand | None:
    """The command of one simple command's words, if it is one of ours."""
    while words and (ASSIGNMENT.match(words[0]) or words[0] in PREFIXES):
        words = words[1:]
    if not words or words[0] == "export":
        return None
    name = words[0].rsplit("/", 1)[-1]
    if re.fullmatch(r"python[\d.]*", name):
        if words[1:2] == ["-m"] and words[2:3] in (["runtime"], ["generator"]):
            program = "runtime" if words[2] == "runtime" else "reactgen"
            return DocCommand(page, line, program, tuple(words[3:]), text, inline, complete)
        if words[1:2] and words[1].rsplit("/", 1)[-1] == "dev.py":
            return DocCommand(page, line, "dev.py", tuple(words[2:]), text, inline)
        return None
    if name in ("reactgen", "runtime", "dev.py"):
        return DocCommand(page, line, name, tuple(words[1:]), text, inline, complete)
    return None


class DocSyntaxError(Exception):
    """A command line that cannot even be split into words."""


def commands_of_line(page: str, line: int, text: str, inline: bool,
                     complete: bool = False) -> list[DocCommand]:
    """Our commands in one (joined) shell line or inline span."""
    if inline:
        # Prose is not shell: quote characters in a span are part of the text.
        words = text.replace("'", " ").replace('"', " ").split()
        command = _command(page, line, words, text, inline)
        return [command] if command else []
    replaced, inner = _substitutions(text)
    try:
        words = shlex.split(replaced, comments=True)
    except ValueError as exc:
        raise DocSyntaxError(f"{page}:{line}: `{text}`: cannot split into words: {exc}") from None
    found = [command for segment in _segments(words)
             if (command := _command(page, line, segment, text, inline, complete)) is not None]
    for nested in inner:
        found.extend(commands_of_line(page, line, nested, inline))
    return found


def commands_in(page: str, text: str) -> list[DocCommand]:
    """Every command of ours in the Markdown ``text`` of ``page``."""
    found: list[DocCommand] = []
    for line, logical, complete in _logical_lines(text):
        if PROGRAM.search(logical):
            found.extend(commands_of_line(page, line, logical, False, complete))
    for line, span in _inline_spans(text):
        if span not in NOT_COMMANDS:
            found.extend(commands_of_line(page, line, span, inline=True))
    return found


# --------------------------------------------------------------------------- checks


@cache
def parser_of(program: str) -> argparse.ArgumentParser:
    """The real parser of ``program``."""
    return generator_cli.build_parser() if program == "reactgen" else runtime_cli.build_parser()


@cache
def dev_module() -> ModuleType:
    """``dev.py``, imported (it runs nothing on import)."""
    spec = importlib.util.spec_from_file_location("reactgen_dev_script", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def _flag_of(word: str) -> str | None:
    """The flag a word names (``[--limit`` -> ``--limit``, ``--out=x`` -> ``--out``)."""
    core = word.strip("[](),").split("=", 1)[0]
    return core if re.fullmatch(r"--?[A-Za-z][\w-]*", core) else None


def check_words(command: DocCommand) -> list[str]:
    """Problems found word by word: unknown subcommands, unknown flags, missing values."""
    parser = parser_of(command.program)
    words = list(command.words)
    path = [command.program]
    index = 0
    while index < len(words):
        choices = _subcommands(parser)
        if not choices:
            break
        word = words[index].strip("[]")
        if word.startswith("-") or is_placeholder(words[index]):
            break
        names = [name for name in word.split("|") if name]
        unknown = [name for name in names if name not in choices]
        if unknown:
            return [f"`{' '.join(path)} {unknown[0]}` is not a command "
                    f"(known: {', '.join(sorted(choices))})"]
        index += 1
        if len(names) > 1:
            return []
        path.append(word)
        parser = choices[word]
    problems: list[str] = []
    options = _options(parser)
    command_name = " ".join(path)
    if command.complete:
        shown = {flag for word in words for part in word.strip("[]").split("|")
                 if (flag := _flag_of(part)) is not None}
        missing = sorted({action.option_strings[-1] for action in options.values()
                          if not shown & set(action.option_strings)} - {"--help", "--version"})
        if missing:
            problems.append(f"this synopsis of `{command_name}` lacks {', '.join(missing)}")
    for position in range(index, len(words)):
        word = words[position]
        flags = [flag for part in word.strip("[]").split("|")
                 if (flag := _flag_of(part)) is not None]
        for flag in flags:
            action = options.get(flag)
            if action is None:
                problems.append(f"`{command_name}` has no flag {flag}")
                continue
            if len(flags) > 1 or "=" in word:
                continue
            following = words[position + 1] if position + 1 < len(words) else None
            shown_without_value = (word.endswith("]") or following == "|"
                                   or (following is None and not command.inline)
                                   or (following is not None
                                       and following.lstrip("[").startswith("-")))
            shown_with_value = (following is not None and word.startswith("[")
                                and not word.endswith("]") and following.endswith("]")
                                and not following.startswith("["))
            if shown_without_value and action.nargs != 0:
                problems.append(f"`{command_name} {flag}` takes a value; none is shown")
            if shown_with_value and action.nargs == 0:
                problems.append(f"`{command_name} {flag}` takes no value; "
                                f"{following.rstrip(']')!r} is shown")
    return problems


def check_parse(command: DocCommand) -> list[str]:
    """Problems reported by the real parser, as the program parses its arguments."""
    parser = parser_of(command.program)
    errors = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        try:
            args, unknown = parser.parse_known_args(list(command.words))
        except SystemExit as exc:
            if exc.code in (0, None):  # --help, --version
                return []
            lines = errors.getvalue().strip().splitlines()
            return [lines[-1] if lines else f"argparse exited {exc.code}"]
    if unknown:  # as runtime.cli.main reports them
        return [f"{command.program} {args.command}: error: unrecognized arguments: "
                f"{' '.join(unknown)}"]
    return []


def check_dev(command: DocCommand) -> list[str]:
    known = sorted(dev_module().COMMANDS)
    if not command.words or command.words[0] not in known:
        shown = command.words[0] if command.words else "(nothing)"
        return [f"`dev.py {shown}` is not a command (known: {', '.join(known)})"]
    return []


def check(command: DocCommand) -> list[str]:
    """Every problem of one command of the docs, each naming page, line and command."""
    if command.program == "dev.py":
        problems = check_dev(command)
    else:
        problems = check_words(command)
        synopsis = command.inline or any(is_placeholder(word) for word in command.words)
        if not problems and not synopsis:
            problems = check_parse(command)
    return [f"{command.where}: `{command.text}`: {problem}" for problem in problems]


def check_page(page: str, text: str) -> list[str]:
    """Every problem of the commands in one page's Markdown ``text``."""
    try:
        return [problem for command in commands_in(page, text) for problem in check(command)]
    except DocSyntaxError as exc:
        return [str(exc)]


# --------------------------------------------------------------------------- the docs


def _all_commands() -> list[DocCommand]:
    found: list[DocCommand] = []
    for page in PAGES:
        with contextlib.suppress(DocSyntaxError):  # reported by test_pages_split_into_words
            found.extend(commands_in(page, (ROOT / page).read_text(encoding="utf-8")))
    return found


DOC_COMMANDS = _all_commands()


@pytest.mark.parametrize("command", DOC_COMMANDS,
                         ids=[f"{c.where}:{'inline' if c.inline else 'block'}:{c.program}"
                              for c in DOC_COMMANDS])
def test_doc_command(command: DocCommand) -> None:
    problems = check(command)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES)
def test_pages_split_into_words(page: str) -> None:
    try:
        commands_in(page, (ROOT / page).read_text(encoding="utf-8"))
    except DocSyntaxError as exc:
        pytest.fail(str(exc))


def test_the_docs_have_commands_where_expected() -> None:
    """The extraction finds the command blocks (a broken extractor would check nothing)."""
    blocks = {(c.page, c.program) for c in DOC_COMMANDS if not c.inline}
    for expected in [("README.md", "dev.py"), ("README.md", "runtime"),
                     ("docs/operations.md", "runtime"), ("docs/how-to.md", "runtime"),
                     ("docs/testing.md", "dev.py"), ("docs/embedded-server.md", "runtime"),
                     ("docs/runtime.md", "runtime")]:
        assert expected in blocks, f"no command block of {expected[1]} found in {expected[0]}"
    inline = {c.program for c in DOC_COMMANDS if c.inline}
    assert inline == {"reactgen", "runtime", "dev.py"}
    assert len(DOC_COMMANDS) > 150


# --------------------------------------------------------------------------- the checker


def _problems(markdown: str) -> list[str]:
    return check_page("x.md", markdown)


def test_an_unknown_flag_fails_with_page_line_and_flag() -> None:
    problems = _problems("# Title\n\n```sh\nruntime tasks list --bogus\n```\n")
    assert len(problems) == 1
    assert problems[0].startswith("x.md:4: `runtime tasks list --bogus`: ")
    assert "--bogus" in problems[0]


@pytest.mark.parametrize("markdown", [
    "```sh\nruntime tasks list --bogus\n```\n",
    "```bash\nMONGODB_URI=x runtime tasks list --bogus | jq .source_id\n```\n",
    "```console\n$ runtime tasks list \\\n    --bogus\noutput line\n```\n",
    "```sh\nexport X=1\necho $(runtime tasks list --bogus)\n```\n",
    "```sh\nruntime tasks list [--limit 50] [--bogus]\n```\n",
    "```sh\nruntime tasks list [SELECTION] [--limit 50]\n           [--bogus N]\n```\n",
    "```\nruntime tasks list --json  # then --bogus\nruntime tasks list --bogus\n```\n",
    "Use `runtime tasks list --bogus` to see them.\n",
    "$ python -m runtime tasks list --bogus\n",
    "```sh\ncd app && runtime tasks list --bogus\n```\n",
])
def test_the_checker_finds_a_bogus_flag(markdown: str) -> None:
    problems = _problems(markdown)
    assert len(problems) == 1, problems
    assert "--bogus" in problems[0]


@pytest.mark.parametrize(("markdown", "expected"), [
    ("```sh\nruntime task list\n```\n", "`runtime task` is not a command"),
    ("```sh\nruntime tasks lst [SELECTION]\n```\n", "`runtime tasks lst` is not a command"),
    ("`runtime cron run-later JOB`\n", "`runtime cron run-later` is not a command"),
    ("```sh\nreactgen build\n```\n", "the following arguments are required: schemas"),
    ("```sh\nruntime tasks list --limit many\n```\n", "invalid int value: 'many'"),
    ("```sh\nruntime tasks list --limit\n```\n", "takes a value"),
    ("```sh\nruntime tasks list [--limit]\n```\n", "takes a value"),
    ("```sh\nruntime tasks list [--desc yes]\n```\n", "takes no value"),
    ("```sh\nruntime tasks list --desc extra\n```\n", "unrecognized arguments: extra"),
    ("```sh\nruntime serve --concurren 5\n```\n", "has no flag --concurren"),
    ("```sh\npython3 dev.py lint\n```\n", "`dev.py lint` is not a command"),
    ("```sh synopsis\nruntime instances [--all] [--mongodb-uri URI] [--database app]\n```\n",
     "this synopsis of `runtime instances` lacks --json, --timeout-ms"),
    ("```sh\nruntime explain 'unbalanced\n```\n", "cannot split into words"),
])
def test_the_checker_reports(markdown: str, expected: str) -> None:
    problems = _problems(markdown)
    assert len(problems) == 1, problems
    assert expected in problems[0], problems[0]


@pytest.mark.parametrize("markdown", [
    "```sh\nruntime tasks list --status failed --error 'ERP (503)' --json | jq -r .id\n```\n",
    "```sh\nruntime tasks show   TASK_ID | --reactor NAME --source-id ID\n```\n",
    "```sh\nruntime db [--dbpath DIR | --in-memory] [--log-level INFO]\n```\n",
    "```sh\nruntime serve ... --dashboard-port 8700   # see runtime serve --help\n```\n",
    "```sh\nMONGODB_URI=$(cat .reactgen/uri) runtime tasks count\n```\n",
    "```sh\nruntime --version\nreactgen --version\nruntime serve --help\n```\n",
    "```sh\npython3 dev.py test -k planning -x\n```\n",
    "```yaml\nrun: runtime tasks list --bogus\n```\n",
    "```text tutorial output\nruntime: error: --bogus\n```\n",
    "`runtime tasks|reactors|explain` and `reactgen build <schemas> [--out generated]`\n",
    "`runtime exited with code 1; ...`\n",
    "```sh synopsis\nruntime instances [--all] [--mongodb-uri URI] [--database app]\n"
    "                  [--timeout-ms 5000] [--json]\n```\n",
    "```\nreactgen: warning: generated/handlers/x.py: imports 'Order'\n```\n",
])
def test_the_checker_accepts(markdown: str) -> None:
    assert _problems(markdown) == []
