"""The OpenAPI document as huabu really answers.

FastAPI documents what it parses itself. Most dialect routes read their bodies themselves (a
dialect's clients send JSON, forms or multipart, and its errors must name its own fields), so
each such route states its body with ``body()``; and FastAPI's 422 ``HTTPValidationError`` is
replaced by the statuses the server sends, each in the error shape of the dialect that owns the
path (``ErrorRenderers`` knows which).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

if TYPE_CHECKING:
    from huabu.web.error_renderers import ErrorRenderers

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested definitions written in place, so it can sit
    anywhere in the document (two dialects may both have a ``Txt2ImgIn``)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                name = node["$ref"].rsplit("/", 1)[-1]
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**definitions[name], **rest})
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


def request_body(
    schema: type[BaseModel] | dict[str, Any], *media_types: str, required: bool = True
) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself: the body's schema under each
    media type it accepts (JSON if none is named)."""
    if isinstance(schema, type):
        schema = schema_of(schema)
    return {
        "requestBody": {
            "required": required,
            "content": {media: {"schema": schema} for media in media_types or (JSON,)},
        }
    }


def ok(
    schema: type[BaseModel] | dict[str, Any], description: str = "Success"
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that builds its answer itself: the body of its 200."""
    if isinstance(schema, type):
        schema = schema_of(schema)
    return {200: {"description": description, "content": {JSON: {"schema": schema}}}}


#: Statuses any operation may answer, and when. ``sync`` marks routes that wait for the task.
_ERRORS: dict[int, str] = {
    400: "Bad input; the field is named (`param` where the shape has one, and at the start of "
    "the message).",
    401: "Missing, wrong, expired or revoked credentials.",
    404: "No such task, file, model or route (or not yours).",
    429: "Too many: unfinished tasks, a quota, or wrong passwords in a row; see `Retry-After`.",
    500: "A bug: the message carries an error id that the server log has the details under.",
}
_WITH_BODY: dict[int, str] = {
    413: "The body is over this route's limit (HUABU_MAX_BODY_BYTES; 256 KiB where it takes "
    "no image), or its images hold more than HUABU_MAX_REQUEST_PIXELS together."
}
_SUBMITS: dict[int, str] = {503: "The model cannot be loaded on this server now."}
_SYNC: dict[int, str] = {
    409: "The task was cancelled while this request waited for it.",
    500: "The task failed (the message says why; `task_id` names it), or a bug.",
    504: "The task did not finish within HUABU_SYNC_TIMEOUT; it goes on, follow it by its id.",
}
SYNC = {"x-huabu-waits": True}  # openapi_extra of routes that wait for their task


def truthful_openapi(app: FastAPI, renderers: ErrorRenderers) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for path, operations in document.get("paths", {}).items():
        shape = schema_of(renderers.shape_for(path))
        for method, operation in operations.items():
            errors = dict(_ERRORS)
            if "requestBody" in operation:
                errors |= _WITH_BODY
            if method == "post":
                errors |= _SUBMITS
            if operation.pop("x-huabu-waits", False):
                errors |= _SYNC
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status, description in sorted(errors.items()):
                responses.setdefault(
                    str(status),
                    {"description": description, "content": {JSON: {"schema": shape}}},
                )
    for name in ("HTTPValidationError", "ValidationError"):
        document.get("components", {}).get("schemas", {}).pop(name, None)
    app.openapi_schema = document
    return document
