"""Request bodies read within bounds, and the one check of the values they carry.

JSON is parsed only after what it costs is bounded from the raw bytes: the body's size (per
route: a route that needs no image reads at most ``SMALL_BODY``) and its number of items (a
count of separators, which bounds what the parser builds). The parser holds the interpreter
while it runs, wherever it runs, so these bounds are what keep one body from stalling every
other request; large bodies are also parsed on a worker thread so that the event loop keeps
serving between the parser's steps.

Every value is then checked once, for every dialect, for what no layer below can hold: text
with NUL or a lone surrogate (PostgreSQL refuses both), numbers that are not finite or do
not fit 64 bits, and nesting deeper than ``MAX_DEPTH``. Errors name the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request

from huabu.errors import InvalidRequest, TooLarge

#: Bodies of routes that carry no image (logins, options, polls, listings).
SMALL_BODY = 256 * 1024
#: Objects and arrays nest at most this deep (A1111's deepest real bodies nest 6).
MAX_DEPTH = 32
#: Separators (``,`` and ``:``) a JSON body may hold: items the parser would build.
MAX_ITEMS = 200_000
#: Bodies larger than this are parsed on a worker thread.
OFF_LOOP_BYTES = 64 * 1024

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
    elif isinstance(data, dict | list):
        if len(path) >= MAX_DEPTH:
            field = field_name(path) or "body"
            raise InvalidRequest(
                f"{field} nests deeper than {MAX_DEPTH} levels of objects and arrays", param=field
            )
        if isinstance(data, dict):
            for key, value in data.items():
                checked_text(key, (*path, key))
                check_values(value, (*path, key))
        else:
            for index, value in enumerate(data):
                check_values(value, (*path, index))


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"the request body holds {name}, which is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"the request body holds {text}, which is out of range")
    return value


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object body, bounded and checked (see the module's docstring)."""
    if not raw.strip():
        return {}
    items = raw.count(b",") + raw.count(b":")
    if items > MAX_ITEMS:
        raise TooLarge(
            f"the request body holds about {items} items; the limit is {MAX_ITEMS}", param="body"
        )
    try:
        data = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidRequest(
            f"the request body nests deeper than {MAX_DEPTH} levels of objects and arrays"
        ) from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, and ints of over 4300 digits
        raise InvalidRequest("the request body is not valid JSON", param=None) from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", param=None)
    check_values(data)
    return data


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"the request body is over this route's limit of {limit} bytes", param="body")


def check_declared_size(request: Request, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit`` before a byte of it is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def read_limited(request: Request, limit: int) -> bytes:
    """The raw body, refused with a 413 naming ``body`` as soon as it passes ``limit`` bytes
    (from Content-Length before a byte is read)."""
    check_declared_size(request, limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
