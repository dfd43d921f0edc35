"""Request bodies read within bounds, and the one check of the values they carry.

JSON is parsed only after what it costs is bounded from the raw bytes: the body's size (per
route: a route that needs no image reads at most ``SMALL_BODY``) and its number of items (a
count of separators, which bounds what the parser builds). The parser holds the interpreter
while it runs, wherever it runs, so these bounds are what keep one body from stalling every
other request; large bodies are also parsed on a worker thread so that the event loop keeps
serving between the parser's steps.

Every value is then checked once, for every dialect, for what no layer below can hold
(``huabu.values``: text with NUL or a lone surrogate, numbers that are not finite or do not
fit 64 bits, nesting deeper than ``MAX_DEPTH``). Errors name the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from huabu.errors import InvalidRequest, TooLarge
from huabu.values import MAX_DEPTH, check_values

#: Bodies of routes that carry no image (logins, options, polls, listings).
SMALL_BODY = 256 * 1024
#: Separators (``,`` and ``:``) a JSON body may hold: items the parser would build.
MAX_ITEMS = 200_000
#: What JSON counts as whitespace (Python's strip() takes more: a vertical tab is not JSON).
_JSON_WHITESPACE = b" \t\r\n"
#: Bodies larger than this are parsed on a worker thread.
OFF_LOOP_BYTES = 64 * 1024


def _no_constant(name: str) -> Any:
    raise InvalidRequest(f"the request body holds {name}, which is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidRequest(f"the request body holds {text}, which is out of range")
    return value


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object body, bounded and checked (see the module's docstring)."""
    if not raw.strip(_JSON_WHITESPACE):  # no body; anything else must be JSON
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


async def parse_json_body(raw: bytes) -> dict[str, Any]:
    """``parse_json``, on a worker thread when the body is over OFF_LOOP_BYTES."""
    if len(raw) > OFF_LOOP_BYTES:
        return await run_in_threadpool(parse_json, raw)
    return parse_json(raw)
