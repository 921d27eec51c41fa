"""Tracebacks people can debug: a handler's failure trimmed to the user's own frames."""

from __future__ import annotations

import asyncio
import os
import threading
import traceback

import runtime

MAX_CHARS = 8000
"""Longer tracebacks keep their end (the frame that raised and the exception)."""

_HIDDEN = tuple(os.path.dirname(module.__file__ or "") + os.sep
                for module in (runtime, asyncio)) + (threading.__file__ or "",)


def _is_user_frame(filename: str) -> bool:
    return not filename.startswith(_HIDDEN)


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback without the runtime's and asyncio's frames (the handler and the code
    it called remain), with chained causes, at most :data:`MAX_CHARS` characters."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = [f for f in traceback.extract_tb(current.__traceback__)
                  if _is_user_frame(f.filename)]
        text = "".join(traceback.format_list(frames)) + "".join(
            traceback.format_exception_only(current))
        parts.append(("Traceback (most recent call last):\n" if frames else "") + text)
        if current.__cause__ is not None:
            connector = "\nThe above exception was the direct cause of the following:\n\n"
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            connector = "\nDuring handling of the above exception, another occurred:\n\n"
            current = current.__context__
        else:
            break
        parts.append(connector)
    text = "".join(reversed(parts)).strip()
    return text if len(text) <= MAX_CHARS else "...\n" + text[-MAX_CHARS:]
