"""Typed dependencies for route handlers: the services, the caller, the public base URL.

They are ``async`` so FastAPI runs them on the event loop: a sync dependency costs a thread
hop per request. Only a credential missing from the cache goes to the database (in a thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from huabu.auth import Principal
from huabu.web.services import Services


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def current_user(request: Request, services: ServicesDep) -> Principal:
    """The caller from ``Authorization: Bearer``, or the anonymous user if allowed (checked
    once per request: ``web.routing`` checks it before the body is read)."""
    known = getattr(request.state, "principal", None)
    if known is not None:
        return known
    header = request.headers.get("authorization")
    principal = services.auth.cached(header)
    if principal is None:
        client = request.client.host if request.client else None
        principal = await run_in_threadpool(services.auth.principal, header, client)
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]


async def base_url(request: Request, services: ServicesDep) -> str:
    """Where clients reach this server: HUABU_PUBLIC_URL, or the URL they used."""
    return (services.settings.public_url or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]


async def file_url(base: BaseUrl, services: ServicesDep) -> Callable[[str], str]:
    """Turns a storage key into the signed, absolute URL clients download it from."""
    return lambda key: base + services.signer.path(key)


FileUrl = Annotated[Callable[[str], str], Depends(file_url)]
