"""What every dialect's router needs: reading a body in whatever encoding its clients send,
and validating it into its wire schema with errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import Request
from pydantic import BaseModel, ValidationError

from huabu.errors import InvalidRequest, NotFound
from huabu.fetch import fetch
from huabu.web.services import Services

Wire = TypeVar("Wire", bound=BaseModel)


async def read_body(request: Request) -> dict[str, Any]:
    """JSON, urlencoded or multipart form, as a dict (form fields as strings)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON", param=None) from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object", param=None)
    return data


def validate(schema: type[Wire], data: dict[str, Any]) -> Wire:
    """``data`` as ``schema``, or InvalidRequest naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"] if first["type"] != "missing" else "is required"
        raise InvalidRequest(f"{param}: {message}", param=param) from None


def image_bytes_from_url(services: Services, url: str, *, field: str) -> bytes:
    """The image a client points at: huabu's own signed ``/files/…`` URL straight from storage
    (valid signature required), anything else through the SSRF-safe fetcher. Blocking."""
    parts = urlsplit(url.strip())
    if parts.path.startswith("/files/"):
        query = parse_qs(parts.query)
        try:
            expires, signature = int(query["expires"][0]), query["sig"][0]
        except (KeyError, ValueError, IndexError):
            expires, signature = 0, ""
        if signature:
            key = unquote(parts.path.removeprefix("/files/"))
            try:
                services.signer.verify(key, expires, signature)
                return services.storage.get(key)
            except NotFound:
                raise InvalidRequest(
                    f"{field}: this server's image link is invalid or has expired", param=field
                ) from None
    return fetch(url.strip(), field=field, settings=services.settings)
