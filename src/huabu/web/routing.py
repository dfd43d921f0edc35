"""The route class every router uses: credentials first, then a bounded body.

FastAPI reads and parses a route's body before it resolves the route's dependencies, so a
caller without credentials could make the server parse 50 MB before hearing 401. Here a route
that needs a caller (it depends on ``current_user``) checks the credentials first; and a body
FastAPI parses itself (a route with a pydantic body parameter) is read within ``SMALL_BODY``
and parsed by ``web.bodies`` (bounded, values checked), off the loop when large. Routes that
read their bodies themselves do so through ``dialects.common.read_body``, after this.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from huabu.web.bodies import SMALL_BODY, parse_json_body, read_limited
from huabu.web.deps import current_user
from huabu.web.error_renderers import Renderer


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(
        dependency.call is call or _depends_on(dependency, call)
        for dependency in dependant.dependencies
    )


def _is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return not content_type or content_type == "application/json" or content_type.endswith("+json")


class GuardedRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        authenticates = _depends_on(self.dependant, current_user)
        parses_json = self.body_field is not None and not isinstance(
            self.body_field.field_info, params.Form
        )

        async def guarded(request: Request) -> Response:
            if authenticates:
                await current_user(request, request.app.state.services)
            if parses_json and _is_json(request):
                raw = await read_limited(request, SMALL_BODY)
                # Starlette's own caches of the body, which FastAPI reads next.
                request._body = raw
                if raw:
                    request._json = await parse_json_body(raw)
            return await handler(request)

        return guarded


@dataclass(frozen=True)
class Mount:
    """What an API adds to the app: its routers, and the error body of each path prefix it
    owns (path prefix, renderer, the body's model for the OpenAPI document). ``app`` mounts
    every API's in one loop."""

    routers: tuple[APIRouter, ...]
    errors: tuple[tuple[str, Renderer, type[BaseModel]], ...] = ()
