"""What every dialect's router needs: reading a body in whatever encoding its clients send,
within bounds and checked (``web.bodies``), and validating it into its wire schema with errors
that name the field."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from fastapi import Request
from pydantic import BaseModel, ValidationError

from huabu.errors import InvalidRequest, NotFound, invalid_field
from huabu.fetch import fetch
from huabu.tasks.uploads import NewUploads
from huabu.values import check_values
from huabu.web.bodies import check_declared_size, parse_json_body, read_limited
from huabu.web.services import Services

Wire = TypeVar("Wire", bound=BaseModel)


async def read_body(request: Request, *, limit: int | None = None) -> dict[str, Any]:
    """JSON, urlencoded or multipart form, as a dict (form fields as strings), read within
    ``limit`` bytes (the server's body cap if None) and checked (``web.bodies``). Call it
    after the caller's credentials are checked: it is the expensive part of a request."""
    settings = request.app.state.services.settings
    limit = settings.max_body_bytes if limit is None else min(limit, settings.max_body_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        check_declared_size(request, limit)
        # A form field may be as large as the body may be (a base64 image in a urlencoded
        # body is one field; Starlette's default cap for it is 1 MiB).
        form = await request.form(max_part_size=limit)
        fields = {key: value for key, value in form.items() if isinstance(value, str)}
        check_values(fields)
        return fields
    return await parse_json_body(await read_limited(request, limit))


def validate(schema: type[Wire], data: dict[str, Any]) -> Wire:
    """``data`` as ``schema``, or InvalidRequest naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise invalid_field(exc.errors()[0]) from None


def _own_key(services: Services, url: str, *, field: str) -> str | None:
    """The storage key behind huabu's own signed ``/files/…`` URL (the signature must be
    valid), or None for any other URL."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # malformed: not ours, and the fetcher says what is wrong with it
        return None
    if not parts.path.startswith("/files/"):
        return None
    query = parse_qs(parts.query)
    try:
        expires, signature = int(query["expires"][0]), query["sig"][0]
    except (KeyError, ValueError, IndexError):
        return None
    key = unquote(parts.path.removeprefix("/files/"))
    try:
        services.signer.verify(key, expires, signature)
    except NotFound:
        raise InvalidRequest(
            f"{field}: this server's image link is invalid or has expired", param=field
        ) from None
    return key


def image_bytes_from_url(services: Services, url: str, *, field: str) -> bytes:
    """The image a client points at: huabu's own signed ``/files/…`` URL straight from storage
    (valid signature required), anything else through the SSRF-safe fetcher. Blocking."""
    key = _own_key(services, url, field=field)
    if key is not None:
        try:
            return services.storage.get(key)
        except NotFound:
            raise InvalidRequest(
                f"{field}: this server no longer has that image", param=field
            ) from None
    return fetch(url.strip(), field=field, settings=services.settings)


def upload_from_url(
    services: Services, owner_id: uuid.UUID, url: str, *, field: str, uploads: NewUploads
) -> uuid.UUID:
    """The upload id of the image a client points at: the link to one of their uploads is that
    upload; anything else is read, checked and added to ``uploads`` (stored only if the request
    is accepted). Blocking."""
    key = _own_key(services, url, field=field)
    if key is not None:
        upload = services.uploads.with_key(owner_id, key)
        if upload is not None:
            return upload.id
    data = image_bytes_from_url(services, url, field=field)
    return uploads.add(data, field=field).id
