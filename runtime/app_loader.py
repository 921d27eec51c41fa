"""Loading an application: the generated registry and the handler of each reactor."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.cron_spec import CronSpec
from runtime.hooks import Hooks
from runtime.middleware import Middleware
from runtime.reactor import ReactorSpec


class AppLoadError(Exception):
    """The application package cannot be loaded; the message says what to do."""


@dataclass
class LoadedApp:
    """Reactors, their handlers, the per-database pipelines and the indexes to ensure; cron
    jobs (their handlers are in ``handlers`` too, by job name)."""

    reactors: list[ReactorSpec]
    handlers: dict[str, Callable[[Any], Any]]
    pipelines: dict[str | None, list[dict[str, Any]]]
    indexes: list[tuple[str | None, str, list[tuple[str, int]], dict[str, Any]]]
    crons: list[CronSpec] = field(default_factory=list)


def _looks_like_a_path(app: str) -> bool:
    return os.sep in app or "/" in app or app.startswith(".")


def _package_of_folder(app: str) -> str:
    """The package name of the folder ``app`` (``generated/``, ``./myapp/generated``), made
    importable by putting its parent directory first on ``sys.path``."""
    folder = Path(app).expanduser().resolve()
    hint = ("pass the folder `reactgen build --out` wrote (it holds registry.py), e.g. "
            "--app ./generated, or its package name, e.g. --app generated")
    if not folder.is_dir():
        raise AppLoadError(f"--app {app}: no such folder; {hint}")
    if not (folder / "registry.py").is_file():
        raise AppLoadError(f"--app {app}: {folder} has no registry.py, so it is not a "
                           f"package built by `reactgen build`; {hint}")
    if not folder.name.isidentifier():
        raise AppLoadError(f"--app {app}: the folder name {folder.name!r} is not a Python "
                           "package name (letters, digits and _ only); build into a folder "
                           "named like one, e.g. `reactgen build <definitions> --out "
                           "generated`")
    parent = str(folder.parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    return folder.name


def _syntax_error(module_name: str, exc: SyntaxError) -> str:
    where = exc.filename or module_name
    return f"handler module {where} line {exc.lineno}: {exc.msg}"


def _import_error(module_name: str, exc: Exception) -> str:
    """Where importing ``module_name`` failed: its innermost frame in the application's own
    files (not in the import machinery), then the exception."""
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__)
              if "importlib" not in frame.filename]
    if frames:
        frame = frames[-1]
        return (f"handler module {frame.filename} line {frame.lineno}: "
                f"{type(exc).__name__}: {exc}")
    return f"handler module {module_name}: {type(exc).__name__}: {exc}"


def load_app(package: str) -> LoadedApp:
    """Import ``<package>.registry`` and every handler it names.

    ``package`` is a package name importable from ``sys.path`` (``generated``,
    ``myapp.generated``) or the folder ``reactgen build --out`` wrote (``generated/``,
    ``./myapp/generated``), imported as a package from its parent directory.
    """
    shown = package
    if _looks_like_a_path(package):
        package = _package_of_folder(package)
    try:
        registry = importlib.import_module(f"{package}.registry")
    except ModuleNotFoundError as exc:
        parts = f"{package}.registry".split(".")
        if exc.name in {".".join(parts[:end]) for end in range(1, len(parts) + 1)}:
            raise AppLoadError(
                f"--app {shown}: cannot import {package}.registry (no module named "
                f"{exc.name!r} from {os.getcwd()}); pass the folder `reactgen build --out` "
                "wrote (e.g. --app ./generated) or its package name importable from the "
                "current directory (e.g. --app generated); build it with `reactgen build "
                "<definitions folder> --out generated`") from exc
        raise AppLoadError(f"--app {shown}: importing {package}.registry failed: {exc}") \
            from exc
    except ImportError as exc:
        raise AppLoadError(f"--app {shown}: importing {package}.registry failed: {exc}") \
            from exc
    except SyntaxError as exc:
        raise AppLoadError(_syntax_error(f"{package}.registry", exc)) from exc
    reactors: list[ReactorSpec] = list(getattr(registry, "REACTORS", ()))
    crons: list[CronSpec] = list(getattr(registry, "CRONS", ()))
    if not reactors and not crons:
        raise AppLoadError(f"{package}.registry defines no REACTORS (and no CRONS)")
    handlers: dict[str, Callable[[Any], Any]] = {}
    for reactor in [*reactors, *crons]:
        module_name, _, function = reactor.handler.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise AppLoadError(f"reactor {reactor.name!r}: cannot import handler module "
                               f"{module_name} ({exc})") from exc
        except SyntaxError as exc:
            raise AppLoadError(_syntax_error(module_name, exc)) from exc
        except Exception as exc:  # the handler module's own code failed while importing
            raise AppLoadError(_import_error(module_name, exc)) from exc
        handler = getattr(module, function or "handle", None)
        if not callable(handler):
            raise AppLoadError(f"reactor {reactor.name!r}: {module_name} has no function "
                               f"{function or 'handle'}(ctx)")
        handlers[reactor.name] = handler
    pipelines = dict(getattr(registry, "PIPELINES", {}))
    indexes = list(getattr(registry, "INDEXES", []))
    return LoadedApp(reactors, handlers, pipelines, indexes, crons)


def _attribute(reference: str, flag: str, example: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"{flag} {reference!r}: write it as MODULE:ATTRIBUTE, e.g. "
                           f"{example}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"{flag}: cannot import {module_name} ({exc})") from exc
    if not hasattr(module, attribute):
        raise AppLoadError(f"{flag}: {module_name} has no attribute {attribute!r}")
    return getattr(module, attribute)


def load_middleware(reference: str) -> list[Middleware]:
    """The middleware named by ``module:attribute`` (``--middleware``): a
    :class:`~runtime.middleware.Middleware` instance or subclass, a list of them, or a function
    of no arguments returning either."""
    value = _attribute(reference, "--middleware", "myapp.observability:MIDDLEWARE")
    if callable(value) and not isinstance(value, Middleware):
        value = value()  # a Middleware subclass, or a factory
    items = value if isinstance(value, list | tuple) else [value]
    if not items or not all(isinstance(item, Middleware) for item in items):
        raise AppLoadError(f"--middleware: {reference} is not a runtime.middleware.Middleware "
                           "(or a list of them, or a function returning one)")
    return list(items)


def load_hooks(reference: str) -> Hooks:
    """The :class:`~runtime.hooks.Hooks` named by ``module:attribute`` (``--hooks``).

    The attribute is a ``Hooks`` instance or a function of no arguments returning one.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise AppLoadError(f"--hooks {reference!r}: write it as MODULE:ATTRIBUTE, e.g. "
                           "myapp.hooks:HOOKS")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"--hooks: cannot import {module_name} ({exc})") from exc
    value = getattr(module, attribute, None)
    if callable(value) and not isinstance(value, Hooks):
        value = value()
    if not isinstance(value, Hooks):
        raise AppLoadError(f"--hooks: {reference} is not a runtime.hooks.Hooks (or a function "
                           "returning one)")
    return value
