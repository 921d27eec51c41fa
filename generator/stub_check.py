"""Checking the handler stubs a user already edited against a new build: imports of names
that no longer exist, a model that moved, a missing or misshapen ``handle``."""

from __future__ import annotations

import ast
from pathlib import Path

from generator import cron
from generator.definitions import CompiledReactor
from generator.errors import BuildError, Problem
from generator.identifiers import module_name


def check_handler_syntax(out: Path) -> None:
    """Compile every module below ``out/handlers``; raise :class:`BuildError` naming the file,
    line and message of each that does not compile (the runtime could not import it)."""
    handlers = out / "handlers"
    if not handlers.is_dir():
        return
    problems: list[Problem] = []
    for module in sorted(handlers.rglob("*.py")):
        try:
            source = module.read_bytes()
            compile(source, str(module), "exec", dont_inherit=True)
        except SyntaxError as exc:
            column = f" (column {exc.offset})" if exc.offset else ""
            problems.append(Problem(module, "", f"handler module does not compile: "
                                    f"{exc.msg}{column}",
                                    "fix the Python syntax on that line; the runtime imports "
                                    "this module to run the handler", exc.lineno, in_code=True))
        except (OSError, ValueError) as exc:
            problems.append(Problem(module, "", f"cannot read handler module: {exc}",
                                    in_code=True))
    if problems:
        raise BuildError(problems)


def _exported_names(code: str) -> set[str]:
    tree = ast.parse(code)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            value = ast.literal_eval(node.value)
            return {str(v) for v in value}
    return set()


def _defined_names(code: str) -> set[str]:
    if not code:
        return set()
    names: set[str] = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def check_stubs(out: Path, files: dict[str, str], reactors: list[CompiledReactor]) -> list[str]:
    """Warnings for existing handler stubs that the build's ``files`` (relative path ->
    text) of ``reactors`` make wrong."""
    warnings: list[str] = []
    package = out.name
    modules = {r.module: r for r in reactors}
    handlers = out / "handlers"
    if not handlers.is_dir():
        return warnings
    for stub in sorted(handlers.glob("*.py")):
        if stub.name == "__init__.py":
            continue
        name = stub.stem
        shown = f"{package}/handlers/{stub.name}"
        if name in cron.cron_modules(files):
            continue  # a cron job's handler (its context has no document to check)
        if name not in modules:
            warnings.append(f"{shown}: no reactor named like this module any more; delete the "
                            "stub or restore its definition")
            continue
        try:
            tree = ast.parse(stub.read_text(encoding="utf-8"))
        except SyntaxError as exc:
            warnings.append(f"{shown}:{exc.lineno}: syntax error: {exc.msg}")
            continue
        exported = _exported_names(files[f"reactors/{name}.py"])
        model_module = f"{package}.models.{module_name(modules[name].collection)}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == f"{package}.reactors.{name}":
                for alias in node.names:
                    if alias.name not in exported:
                        warnings.append(
                            f"{shown}:{node.lineno}: imports {alias.name!r} from "
                            f"{node.module}, which no longer defines it; if it meant the "
                            f"document model, import {modules[name].model_class!r} instead "
                            f"(available: {', '.join(sorted(exported))})")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    f"{package}.models."):
                if node.module != model_module:
                    warnings.append(f"{shown}:{node.lineno}: imports from {node.module}, but "
                                    f"the reactor's collection model is now in {model_module}")
                    continue
                rel = f"models/{model_module.rsplit('.', 1)[1]}.py"
                defined = _defined_names(files.get(rel, ""))
                for alias in node.names:
                    if alias.name not in defined:
                        warnings.append(
                            f"{shown}:{node.lineno}: imports {alias.name!r} from "
                            f"{node.module}, which no longer defines it; the document model "
                            f"is now {modules[name].model_class!r}: import that instead")
        handle = [n for n in tree.body if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)
                  and n.name == "handle"]
        if not handle:
            warnings.append(f"{shown}: defines no function 'handle(ctx)'; the runtime calls it")
        elif len(handle[0].args.args) != 1:
            warnings.append(f"{shown}:{handle[0].lineno}: 'handle' must take exactly one "
                            "argument, the task context")
    return warnings
