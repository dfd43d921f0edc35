"""The native API's account routes: your usage and quotas (``/me/usage``), and the admin API
(``/admin/users``, their keys and quotas, ``/admin/audit``), for admins only. Every change an
admin makes is audited (``auth.administration``), as the CLI's are."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field

from huabu.auth import Principal
from huabu.auth.administration import KEEP, Administration, KeyRecord, UserRecord
from huabu.errors import Forbidden, InvalidRequest
from huabu.tasks import quotas
from huabu.web.deps import CurrentUser, ServicesDep
from huabu.web.error_renderers import NativeError
from huabu.web.routing import GuardedRoute

PREFIX = "/huabu/v1"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["native: accounts"])
_ADMINS_ONLY: dict[int | str, dict[str, Any]] = {
    403: {"model": NativeError, "description": "Not an admin"}
}


class UsageOut(BaseModel):
    images_today: int = Field(
        description="Images asked for since midnight UTC (failed and cancelled tasks not counted)"
    )
    images_per_day: int | None = Field(description="The quota (null: no limit)")
    requests_last_minute: int = Field(description="Tasks submitted in the last 60 seconds")
    requests_per_minute: int | None = Field(description="The limit (null: none)")
    resets_at: datetime = Field(description="When images_today starts again from 0")


class MyUsageOut(BaseModel):
    user: UsageOut
    key: UsageOut | None = Field(
        description="The API key you called with (its own quotas, "
        "on top of yours); null without a key"
    )


def _usage_out(used: quotas.Usage) -> UsageOut:
    return UsageOut(
        images_today=used.images_today,
        images_per_day=used.images_per_day,
        requests_last_minute=used.requests_last_minute,
        requests_per_minute=used.requests_per_minute,
        resets_at=used.resets_at,
    )


@router.get("/me/usage", response_model=MyUsageOut, summary="Your use today and your quotas")
def my_usage(user: CurrentUser, services: ServicesDep) -> MyUsageOut:
    with services.sessions() as session:
        mine, key = quotas.current(session, user.id, user.key_id)
    return MyUsageOut(user=_usage_out(mine), key=None if key is None else _usage_out(key))


# -- admin ------------------------------------------------------------------------------------


def _admin(user: CurrentUser, services: ServicesDep) -> tuple[Administration, Principal]:
    if not user.is_admin:
        raise Forbidden("admins only")
    return Administration(services.accounts), user


Admin = Annotated[tuple[Administration, Principal], Depends(_admin)]


class UserOut(BaseModel):
    id: str
    email: str
    is_admin: bool
    disabled: bool
    priority: int
    images_per_day: int | None
    requests_per_minute: int | None
    created_at: datetime


class UserList(BaseModel):
    data: list[UserOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str
    password: str | None = Field(
        default=None, description="At least 8 characters; none: the user can only use API keys"
    )
    is_admin: bool = False


class UserChange(BaseModel):
    """Only the fields given change. Quotas: a whole number from 0 up, or null for none."""

    model_config = ConfigDict(extra="forbid")
    disabled: bool | None = None
    priority: int | None = None
    images_per_day: int | None = None
    requests_per_minute: int | None = None


class KeyOut(BaseModel):
    prefix: str = Field(description="hb_<prefix>: names the key in every other call")
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    priority: int | None
    images_per_day: int | None
    requests_per_minute: int | None


class NewKeyOut(BaseModel):
    key: str = Field(description="The whole key: shown this once")
    prefix: str


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: int | None = None


class KeyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images_per_day: int | None = None
    requests_per_minute: int | None = None


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="The admin's email, or cli:<login>")
    action: str
    target: str
    details: dict[str, Any]


class AuditList(BaseModel):
    data: list[AuditOut]
    next_cursor: str | None


def _user_out(user: UserRecord) -> UserOut:
    return UserOut(
        id=str(user.id),
        email=user.email,
        is_admin=user.is_admin,
        disabled=user.disabled,
        priority=user.priority,
        images_per_day=user.images_per_day,
        requests_per_minute=user.requests_per_minute,
        created_at=user.created_at,
    )


def _key_out(key: KeyRecord) -> KeyOut:
    return KeyOut(
        prefix=f"hb_{key.prefix}",
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked=key.revoked,
        priority=key.priority,
        images_per_day=key.images_per_day,
        requests_per_minute=key.requests_per_minute,
    )


def _user_id(user_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(user_id)
    except ValueError:
        raise InvalidRequest(f"user id: {user_id!r} is not a user id", param="user_id") from None


@router.get(
    "/admin/users", response_model=UserList, summary="Users (admins only)", responses=_ADMINS_ONLY
)
def list_users(
    admin: Admin,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = Query(default=None, description="The last email of the page before"),
) -> UserList:
    users = admin[0].users(limit=limit, after=cursor)
    return UserList(
        data=[_user_out(u) for u in users],
        next_cursor=users[-1].email if len(users) == limit else None,
    )


@router.post(
    "/admin/users",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    summary="Create a user (admins only)",
    responses=_ADMINS_ONLY,
)
def create_user(body: UserIn, admin: Admin) -> UserOut:
    administration, caller = admin
    return _user_out(
        administration.add_user(caller.email, body.email, body.password, admin=body.is_admin)
    )


@router.get(
    "/admin/users/{user_id}",
    response_model=UserOut,
    summary="One user (admins only)",
    responses=_ADMINS_ONLY,
)
def get_user(user_id: str, admin: Admin) -> UserOut:
    return _user_out(admin[0].user(_user_id(user_id)))


@router.patch(
    "/admin/users/{user_id}",
    response_model=UserOut,
    summary="Disable or enable a user, set their priority and quotas (admins only)",
    responses=_ADMINS_ONLY,
)
def change_user(user_id: str, body: UserChange, admin: Admin) -> UserOut:
    administration, caller = admin
    target = _user_id(user_id)
    given = body.model_fields_set
    user = administration.user(target)
    if "disabled" in given and body.disabled is not None:
        if body.disabled and target == caller.id:
            raise InvalidRequest("disabled: you cannot disable yourself", param="disabled")
        user = administration.set_disabled(caller.email, target, body.disabled)
    if "priority" in given:
        if body.priority is None:
            raise InvalidRequest("priority: give a level from -9 to 9", param="priority")
        user = administration.set_priority(caller.email, target, body.priority)
    if given & {"images_per_day", "requests_per_minute"}:
        user = administration.set_quota(
            caller.email,
            target,
            images_per_day=body.images_per_day if "images_per_day" in given else KEEP,
            requests_per_minute=(
                body.requests_per_minute if "requests_per_minute" in given else KEEP
            ),
        )
    return _user_out(user)


@router.get(
    "/admin/users/{user_id}/keys",
    response_model=list[KeyOut],
    summary="A user's API keys (admins only)",
    responses=_ADMINS_ONLY,
)
def list_keys(user_id: str, admin: Admin) -> list[KeyOut]:
    return [_key_out(key) for key in admin[0].keys(_user_id(user_id))]


@router.post(
    "/admin/users/{user_id}/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=NewKeyOut,
    summary="Create an API key for a user (admins only)",
    responses=_ADMINS_ONLY,
)
def create_key(user_id: str, admin: Admin, body: KeyIn | None = None) -> NewKeyOut:
    administration, caller = admin
    priority = body.priority if body is not None else None
    key = administration.create_key(caller.email, _user_id(user_id), priority=priority)
    return NewKeyOut(key=key, prefix=key[:15])


@router.patch(
    "/admin/users/{user_id}/keys/{prefix}",
    response_model=KeyOut,
    summary="Set a key's own quotas (admins only)",
    responses=_ADMINS_ONLY,
)
def change_key(user_id: str, prefix: str, body: KeyChange, admin: Admin) -> KeyOut:
    administration, caller = admin
    given = body.model_fields_set
    return _key_out(
        administration.set_key_quota(
            caller.email,
            prefix,
            user_id=_user_id(user_id),
            images_per_day=body.images_per_day if "images_per_day" in given else KEEP,
            requests_per_minute=body.requests_per_minute
            if "requests_per_minute" in given
            else KEEP,
        )
    )


@router.delete(
    "/admin/users/{user_id}/keys/{prefix}",
    status_code=204,
    summary="Revoke a user's API key (admins only)",
    responses=_ADMINS_ONLY,
)
def revoke_key(user_id: str, prefix: str, admin: Admin) -> None:
    administration, caller = admin
    administration.revoke_key(caller.email, prefix, user_id=_user_id(user_id))


@router.get(
    "/admin/audit",
    response_model=AuditList,
    summary="Who did what, newest first (admins only)",
    responses=_ADMINS_ONLY,
)
def audit(
    admin: Admin,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: int | None = Query(
        default=None, ge=1, le=2**63 - 1, description="The last id of the page before"
    ),
) -> AuditList:
    entries = admin[0].audit(limit=limit, before=cursor)
    return AuditList(
        data=[
            AuditOut(
                id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, details=e.details
            )
            for e in entries
        ],
        next_cursor=str(entries[-1].id) if len(entries) == limit else None,
    )


@router.get("/me/keys", response_model=list[KeyOut], summary="Your API keys")
def my_keys(user: CurrentUser, services: ServicesDep) -> list[KeyOut]:
    return [_key_out(key) for key in Administration(services.accounts).keys(user.id)]


@router.post(
    "/me/keys",
    status_code=status.HTTP_201_CREATED,
    response_model=NewKeyOut,
    summary="Create an API key (shown this once)",
)
def create_my_key(user: CurrentUser, services: ServicesDep) -> NewKeyOut:
    key = Administration(services.accounts).create_key(user.email, user.id)
    return NewKeyOut(key=key, prefix=key[:15])


@router.delete(
    "/me/keys/{prefix}",
    status_code=204,
    summary="Revoke one of your API keys",
    responses={404: {"model": NativeError, "description": "No such key of yours"}},
)
def revoke_my_key(prefix: str, user: CurrentUser, services: ServicesDep) -> None:
    Administration(services.accounts).revoke_key(user.email, prefix, user_id=user.id)
