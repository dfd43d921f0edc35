"""What PostgreSQL can hold, checked in one place: text without NUL or lone surrogates,
finite numbers that fit 64 bits, nesting no deeper than ``MAX_DEPTH``.

Request bodies are checked with it before any work (``web.bodies``), naming the client's
field; every row is checked with it again before it is written (``db.checks``), naming the
column, so that nothing a client sent can become a database error (a 500).
"""

from __future__ import annotations

import math
import re
from typing import Any

from huabu.errors import InvalidRequest

#: Objects and arrays nest at most this deep (A1111's deepest real bodies nest 6).
MAX_DEPTH = 32
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_INT_RANGE = 2**63


def field_name(path: tuple[str | int, ...]) -> str | None:
    return ".".join(str(part) for part in path) or None


def checked_text(value: str, path: tuple[str | int, ...] = ()) -> str:
    """``value`` if it can be stored as text: no NUL, no lone surrogate."""
    found = _UNSTORABLE.search(value)
    if found is not None:
        what = "a NUL character" if found[0] == "\x00" else "an unpaired UTF-16 surrogate"
        field = field_name(path) or "body"
        raise InvalidRequest(f"{field} holds {what}, which is not text", param=field)
    return value


def check_values(data: Any, path: tuple[str | int, ...] = ()) -> None:
    """Refuse text that cannot be stored, numbers out of range, and nesting over MAX_DEPTH,
    naming the field."""
    if isinstance(data, str):
        checked_text(data, path)
    elif isinstance(data, bool) or data is None:
        return
    elif isinstance(data, int):
        if not -_INT_RANGE <= data < _INT_RANGE:
            field = field_name(path) or "body"
            raise InvalidRequest(f"{field} is out of range", param=field)
    elif isinstance(data, float):
        if not math.isfinite(data):
            field = field_name(path) or "body"
            raise InvalidRequest(f"{field} must be a finite number", param=field)
    elif isinstance(data, dict | list | tuple):
        if len(path) >= MAX_DEPTH:
            field = field_name(path) or "body"
            raise InvalidRequest(
                f"{field} nests deeper than {MAX_DEPTH} levels of objects and arrays", param=field
            )
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(key, str):
                    checked_text(key, (*path, key))
                check_values(value, (*path, key))
        else:
            for index, value in enumerate(data):
                check_values(value, (*path, index))
