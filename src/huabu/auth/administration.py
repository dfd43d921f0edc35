"""What admins do to users and keys, through the admin API or the CLI: every change is
written to the audit log in the same transaction, with who made it (an admin's email, or
``cli:<login>`` for the command line)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from huabu.auth.accounts import Accounts, check_priority, normalise_email
from huabu.db.tables import ApiKey, AuditEntry, User
from huabu.errors import InvalidRequest, NotFound

#: Sentinel: a quota argument left as it is.
KEEP: Any = object()
MAX_QUOTA = 10**9


@dataclass(frozen=True)
class UserRecord:
    id: uuid.UUID
    email: str
    is_admin: bool
    disabled: bool
    priority: int
    images_per_day: int | None
    requests_per_minute: int | None
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserRecord:
        return cls(
            user.id,
            user.email,
            user.is_admin,
            user.disabled_at is not None,
            user.priority,
            user.images_per_day,
            user.requests_per_minute,
            user.created_at,
        )


@dataclass(frozen=True)
class KeyRecord:
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    priority: int | None
    images_per_day: int | None
    requests_per_minute: int | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyRecord:
        return cls(
            key.prefix,
            key.created_at,
            key.last_used_at,
            key.revoked_at is not None,
            key.priority,
            key.images_per_day,
            key.requests_per_minute,
        )


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


def check_quota(value: Any, field: str) -> int | None:
    """A quota: a whole number from 0 up, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_QUOTA:
        raise InvalidRequest(
            f"{field} must be a whole number from 0 to {MAX_QUOTA}, or null for no limit; "
            f"got {value!r}",
            param=field,
        )
    return value


class Administration:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.sessions = accounts.sessions

    # -- reading ----------------------------------------------------------------------------

    def users(self, *, limit: int = 100, after: str | None = None) -> list[UserRecord]:
        """Users by email, ``limit`` from the one after ``after``."""
        query = select(User).order_by(User.email).limit(limit)
        if after:
            query = query.where(User.email > normalise_email(after))
        with self.sessions() as session:
            return [UserRecord.of(user) for user in session.scalars(query)]

    def user(self, user_id: uuid.UUID | str) -> UserRecord:
        with self.sessions() as session:
            return UserRecord.of(self._user(session, user_id))

    def keys(self, user_id: uuid.UUID | str) -> list[KeyRecord]:
        with self.sessions() as session:
            user = self._user(session, user_id)
            rows = session.scalars(
                select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.created_at)
            )
            return [KeyRecord.of(row) for row in rows]

    def audit(self, *, limit: int = 100, before: int | None = None) -> list[AuditRecord]:
        """The newest entries first, ``limit`` of them from the one before id ``before``."""
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if before is not None:
            query = query.where(AuditEntry.id < before)
        with self.sessions() as session:
            return [
                AuditRecord(e.id, e.at, e.actor, e.action, e.target, dict(e.details))
                for e in session.scalars(query)
            ]

    # -- changing ---------------------------------------------------------------------------

    def add_user(
        self, actor: str, email: str, password: str | None, *, admin: bool = False
    ) -> UserRecord:
        user = self.accounts.add_user(email, password, admin=admin)
        with self.sessions.begin() as session:
            _log(session, actor, "user.create", user.email, admin=admin)
        return UserRecord.of(user)

    def set_disabled(self, actor: str, user_id: uuid.UUID | str, disabled: bool) -> UserRecord:
        """Disable a user (their password, sessions and keys stop working; servers that cached
        a key see it within seconds) or enable them again. Their tasks and images stay."""
        with self.sessions.begin() as session:
            user = self._user(session, user_id, lock=True)
            if disabled and user.disabled_at is None:
                user.disabled_at = datetime.now(UTC)
            elif not disabled:
                user.disabled_at = None
            _log(session, actor, "user.disable" if disabled else "user.enable", user.email)
            return UserRecord.of(user)

    def set_priority(self, actor: str, user_id: uuid.UUID | str, priority: int) -> UserRecord:
        check_priority(priority)
        with self.sessions.begin() as session:
            user = self._user(session, user_id, lock=True)
            user.priority = priority
            _log(session, actor, "user.priority", user.email, priority=priority)
            return UserRecord.of(user)

    def set_quota(
        self,
        actor: str,
        user_id: uuid.UUID | str,
        *,
        images_per_day: int | None = KEEP,
        requests_per_minute: int | None = KEEP,
    ) -> UserRecord:
        """A user's quotas (None: no limit; KEEP: unchanged)."""
        changes = _quota_changes(images_per_day, requests_per_minute)
        with self.sessions.begin() as session:
            user = self._user(session, user_id, lock=True)
            for name, value in changes.items():
                setattr(user, name, value)
            _log(session, actor, "user.quota", user.email, **changes)
            return UserRecord.of(user)

    def create_key(
        self, actor: str, user_id: uuid.UUID | str, *, priority: int | None = None
    ) -> str:
        """A new API key for the user; the only time its full text exists."""
        with self.sessions() as session:
            user = self._user(session, user_id)
        key = self.accounts.create_key(user.id, priority=priority)
        with self.sessions.begin() as session:
            _log(session, actor, "key.create", f"{user.email} {key[:15]}", priority=priority)
        return key

    def revoke_key(
        self, actor: str, key_or_prefix: str, *, user_id: uuid.UUID | str | None = None
    ) -> None:
        with self.sessions.begin() as session:
            row = self._key(session, key_or_prefix, user_id)
            row.revoked_at = row.revoked_at or datetime.now(UTC)
            _log(session, actor, "key.revoke", f"hb_{row.prefix}")

    def set_key_priority(self, actor: str, key_or_prefix: str, priority: int | None) -> None:
        if priority is not None:
            check_priority(priority)
        with self.sessions.begin() as session:
            row = self._key(session, key_or_prefix, None)
            row.priority = priority
            _log(session, actor, "key.priority", f"hb_{row.prefix}", priority=priority)

    def set_key_quota(
        self,
        actor: str,
        key_or_prefix: str,
        *,
        user_id: uuid.UUID | str | None = None,
        images_per_day: int | None = KEEP,
        requests_per_minute: int | None = KEEP,
    ) -> KeyRecord:
        """A key's own quotas, on top of its user's (None: none; KEEP: unchanged)."""
        changes = _quota_changes(images_per_day, requests_per_minute)
        with self.sessions.begin() as session:
            row = self._key(session, key_or_prefix, user_id)
            for name, value in changes.items():
                setattr(row, name, value)
            _log(session, actor, "key.quota", f"hb_{row.prefix}", **changes)
            return KeyRecord.of(row)

    # -- lookups ----------------------------------------------------------------------------

    @staticmethod
    def _user(session: Session, user_id: uuid.UUID | str, *, lock: bool = False) -> User:
        """A user by id, or by email (the CLI's way); unknown: NotFound."""
        query = select(User)
        if isinstance(user_id, uuid.UUID):
            query = query.where(User.id == user_id)
        elif "@" in user_id:
            query = query.where(User.email == normalise_email(user_id))
        else:
            try:
                query = query.where(User.id == uuid.UUID(user_id))
            except ValueError:
                raise NotFound(f"no user {user_id}") from None
        user = session.scalar(query.with_for_update() if lock else query)
        if user is None:
            raise NotFound(f"no user {user_id}")
        return user

    def _key(self, session: Session, key_or_prefix: str, user_id: uuid.UUID | str | None) -> ApiKey:
        row = self.accounts._key_by_prefix(session, key_or_prefix)
        if user_id is not None and row.user_id != self._user(session, user_id).id:
            raise NotFound(f"no API key with prefix {row.prefix} for that user")
        return row


def _quota_changes(images_per_day: Any, requests_per_minute: Any) -> dict[str, int | None]:
    changes = {}
    if images_per_day is not KEEP:
        changes["images_per_day"] = check_quota(images_per_day, "images_per_day")
    if requests_per_minute is not KEEP:
        changes["requests_per_minute"] = check_quota(requests_per_minute, "requests_per_minute")
    return changes


def _log(session: Session, actor: str, action: str, target: str, **details: Any) -> None:
    session.add(AuditEntry(actor=actor, action=action, target=target, details=details))
