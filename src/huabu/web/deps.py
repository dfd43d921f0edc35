"""Typed dependencies for route handlers: the services, the caller, the public base URL."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from huabu.auth import Principal
from huabu.web.services import Services


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def current_user(request: Request, services: ServicesDep) -> Principal:
    """The caller from ``Authorization: Bearer``, or the anonymous user if allowed."""
    return services.auth.principal(request.headers.get("authorization"))


CurrentUser = Annotated[Principal, Depends(current_user)]


def base_url(request: Request, services: ServicesDep) -> str:
    """Where clients reach this server: HUABU_PUBLIC_URL, or the URL they used."""
    return (services.settings.public_url or str(request.base_url)).rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]
