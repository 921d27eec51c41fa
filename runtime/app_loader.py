"""Loading an application: the generated registry and the handler of each reactor."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
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


def load_app(package: str) -> LoadedApp:
    """Import ``<package>.registry`` and every handler it names."""
    try:
        registry = importlib.import_module(f"{package}.registry")
    except ImportError as exc:
        raise AppLoadError(f"--app {package}: cannot import {package}.registry ({exc}); "
                           f"build it with `reactgen build <definitions> --out {package}` "
                           "in the current directory, or pass --app (or REACTGEN_APP) naming "
                           "the generated package") from exc
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
