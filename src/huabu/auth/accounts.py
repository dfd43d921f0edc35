"""Users (email + argon2 password hash), API keys and login sessions.

An API key is ``hb_<prefix>_<secret>``: the 12-character prefix finds its row, the 32-byte
random secret is stored as a SHA-256 digest (a high-entropy secret needs no slow hash; a
password does, hence argon2). A key is shown once, when created. A session token is
``hbs_<secret>``, found by its digest, valid until it expires or its user logs out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import ApiKey, AuthSession, User
from huabu.errors import AuthFailed, InvalidRequest, NotFound
from huabu.native import printable

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_KEY = re.compile(r"^hb_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,})$")
_hasher = PasswordHasher()
ANONYMOUS_EMAIL = "anonymous@localhost"


#: The levels a task can be queued at (``tasks.fairness``): higher levels go first.
MIN_PRIORITY, MAX_PRIORITY = -9, 9


@dataclass(frozen=True)
class Principal:
    """Who is calling: what every layer below the router needs to know about a user.
    ``priority``: the level their tasks queue at, and the most a request may ask for (the
    API key's, when an admin set one on it, else the user's)."""

    id: uuid.UUID
    email: str
    is_admin: bool
    priority: int = 0
    #: The API key used (None: a session, a password, the anonymous user, the CLI): a key's
    #: own quotas apply on top of its user's.
    key_id: uuid.UUID | None = None

    @classmethod
    def of(cls, user: User, key: ApiKey | None = None) -> Principal:
        if user.disabled_at is not None:
            raise AuthFailed("this account is disabled; ask the service's administrator")
        if key is None or key.priority is None:
            priority = user.priority
        else:
            priority = key.priority
        return cls(user.id, user.email, user.is_admin, priority, key.id if key else None)

    def priority_for(self, asked: int | None) -> int:
        """The level a request queues at: what it ``asked`` (lower than the caller's own
        level, or equal), else the caller's."""
        if asked is None:
            return self.priority
        if not MIN_PRIORITY <= asked <= self.priority:
            raise InvalidRequest(
                f"priority must be between {MIN_PRIORITY} and {self.priority} (yours), got {asked}",
                param="priority",
            )
        return asked


def check_priority(level: int) -> int:
    if not MIN_PRIORITY <= level <= MAX_PRIORITY:
        raise InvalidRequest(
            f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {level}",
            param="priority",
        )
    return level


def normalise_email(email: str) -> str:
    """Emails are stored and looked up trimmed and lower-cased."""
    return email.strip().lower()


MAX_EMAIL = 320  # RFC 3696's longest address, and the column's width
MAX_PASSWORD = 1024


def _plausible(email: str) -> bool:
    """Whether ``email`` (normalised) could be an address: one ``@``, no spaces, no control
    characters (which PostgreSQL text cannot even hold), at most MAX_EMAIL characters."""
    if len(email) > MAX_EMAIL:
        return False
    try:
        printable(email)
    except ValueError:
        return False
    return bool(_EMAIL.match(email))


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add_user(self, email: str, password: str | None, *, admin: bool = False) -> User:
        email = normalise_email(email)
        if len(email) > MAX_EMAIL:
            raise InvalidRequest(
                f"email: an address has at most {MAX_EMAIL} characters", param="email"
            )
        if not _plausible(email):
            raise InvalidRequest(f"email: {email!r} is not an email address", param="email")
        if password is not None and not 8 <= len(password) <= MAX_PASSWORD:
            raise InvalidRequest(
                f"password: must be 8 to {MAX_PASSWORD} characters", param="password"
            )
        if password is not None and "\x00" in password:
            raise InvalidRequest("password: must not contain NUL", param="password")
        user = User(
            email=email,
            password_hash=_hasher.hash(password) if password is not None else None,
            is_admin=admin,
        )
        with self.sessions.begin() as session:
            session.add(user)
            try:
                session.flush()
            except IntegrityError:
                raise InvalidRequest(
                    f"email: {email} already has an account", param="email"
                ) from None
        return user

    def user_by_email(self, email: str) -> User:
        if not _plausible(normalise_email(email)):
            raise NotFound("no such user")
        with self.sessions() as session:
            user = session.scalar(select(User).where(User.email == normalise_email(email)))
        if user is None:
            raise NotFound(f"no user {email}")
        return user

    def check_password(self, email: str, password: str) -> User:
        try:
            user = self.user_by_email(email)
        except NotFound:
            _hasher.hash(password)  # same cost as a real check: no timing oracle for emails
            raise AuthFailed("wrong email or password") from None
        try:
            if user.password_hash is None:
                raise VerificationError()
            _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            raise AuthFailed("wrong email or password") from None
        Principal.of(user)  # a disabled user cannot log in
        return user

    def options(self, user_id: uuid.UUID) -> dict[str, Any]:
        """The user's stored dialect options (A1111's ``/options``)."""
        with self.sessions() as session:
            return dict(session.get_one(User, user_id).options or {})

    def update_options(self, user_id: uuid.UUID, changes: dict[str, Any]) -> dict[str, Any]:
        with self.sessions.begin() as session:
            user = session.get_one(User, user_id, with_for_update=True)
            user.options = {**(user.options or {}), **changes}
            return dict(user.options)

    def create_key(self, user_id: uuid.UUID, *, priority: int | None = None) -> str:
        """A new API key for ``user_id`` (its calls queue at ``priority``, None: the user's);
        the only time its full text exists."""
        if priority is not None:
            check_priority(priority)
        prefix = "".join(secrets.choice("abcdefghijkmnopqrstuvwxyz23456789") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        with self.sessions.begin() as session:
            session.add(
                ApiKey(
                    user_id=user_id, prefix=prefix, secret_hash=_digest(secret), priority=priority
                )
            )
        return f"hb_{prefix}_{secret}"

    def revoke_key(self, key_or_prefix: str) -> None:
        with self.sessions.begin() as session:
            row = self._key_by_prefix(session, key_or_prefix)
            row.revoked_at = row.revoked_at or datetime.now(UTC)

    @staticmethod
    def _key_by_prefix(session: Session, key_or_prefix: str) -> ApiKey:
        match = _KEY.match(key_or_prefix)
        prefix = match[1] if match else key_or_prefix.removeprefix("hb_").rstrip("_")
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
        if row is None:
            raise NotFound(f"no API key with prefix {prefix}")
        return row

    def user_for_key(self, key: str) -> User:
        """The owner of a valid, unrevoked API key, or AuthFailed."""
        with self.sessions() as session:
            return session.get_one(User, self._valid_key(session, key).user_id)

    def principal_for_key(self, key: str) -> Principal:
        """Who calls with a valid, unrevoked API key (at the key's priority), or AuthFailed.
        Records the key's use (a server looks a key up at most every few seconds)."""
        with self.sessions.begin() as session:
            row = self._valid_key(session, key)
            principal = Principal.of(session.get_one(User, row.user_id), row)
            row.last_used_at = datetime.now(UTC)
            return principal

    @staticmethod
    def _valid_key(session: Session, key: str) -> ApiKey:
        match = _KEY.match(key.strip())
        if match is None:
            raise AuthFailed("invalid API key")
        row = session.scalar(select(ApiKey).where(ApiKey.prefix == match[1]))
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.secret_hash, _digest(match[2]))
        ):
            raise AuthFailed("invalid API key")
        return row

    def create_session(self, user_id: uuid.UUID, ttl_seconds: int) -> tuple[str, datetime]:
        """A new login session token for ``user_id`` and when it expires."""
        secret = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(seconds=ttl_seconds)
        with self.sessions.begin() as session:
            session.add(
                AuthSession(user_id=user_id, token_hash=_digest(secret), expires_at=expires)
            )
        return f"hbs_{secret}", expires

    def end_session(self, token: str) -> None:
        with self.sessions.begin() as session:
            row = session.scalar(
                select(AuthSession).where(
                    AuthSession.token_hash == _digest(token.removeprefix("hbs_"))
                )
            )
            if row is not None:
                session.delete(row)

    def user_for_session(self, token: str) -> User:
        with self.sessions() as session:
            row = session.scalar(
                select(AuthSession).where(
                    AuthSession.token_hash == _digest(token.removeprefix("hbs_"))
                )
            )
            if row is None or row.expires_at <= datetime.now(UTC):
                raise AuthFailed("session expired or logged out; log in again")
            return session.get_one(User, row.user_id)

    def principal_for_bearer(self, token: str) -> Principal:
        """Who is behind an ``Authorization: Bearer`` token: an API key or a session."""
        token = token.strip()
        if token.startswith("hbs_"):
            return Principal.of(self.user_for_session(token))
        return self.principal_for_key(token)

    def anonymous_user(self) -> User:
        """The one user that owns every request made without credentials (HUABU_ANONYMOUS)."""
        try:
            return self.user_by_email(ANONYMOUS_EMAIL)
        except NotFound:
            pass
        with self.sessions.begin() as session:
            session.execute(
                pg_insert(User)
                .values(id=uuid.uuid4(), email=ANONYMOUS_EMAIL, is_admin=False)
                .on_conflict_do_nothing(index_elements=["email"])
            )
        return self.user_by_email(ANONYMOUS_EMAIL)
