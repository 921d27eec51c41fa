"""The web dashboard: reactors, instances, tasks, and operator actions in a browser.

Served by ``runtime serve --dashboard-port`` (:func:`runtime.dashboard.server.serve_dashboard`
runs it inside the runtime's event loop) and by the standalone ``runtime dashboard`` command
(:mod:`runtime.dashboard.cli`). Pages are rendered on the server (``app.py``, jinja2 templates
under ``templates/``, autoescaped); every read and write goes through
:class:`runtime.management.Management`. Mutating actions need the dashboard token and a
per-session CSRF token (``security.py``). Reference: docs/operations.md, "Dashboard".

This package imports nothing heavy itself, so that ``runtime`` commands which do not serve the
dashboard do not load Starlette or uvicorn.
"""
