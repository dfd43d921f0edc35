"""Users (email + argon2 password hash) and API keys.

An API key is ``hb_<prefix>_<secret>``: the 12-character prefix finds its row, the 32-byte
random secret is stored as a SHA-256 digest (a high-entropy secret needs no slow hash; a
password does, hence argon2). A key is shown once, when created.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import ApiKey, User
from huabu.errors import HuabuError, InvalidRequest, NotFound

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_KEY = re.compile(r"^hb_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,})$")
_hasher = PasswordHasher()


class AuthFailed(HuabuError):
    """Credentials missing, wrong, or revoked (deliberately not saying which)."""


def normalise_email(email: str) -> str:
    """Emails are stored and looked up trimmed and lower-cased."""
    return email.strip().lower()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add_user(self, email: str, password: str | None, *, admin: bool = False) -> User:
        email = normalise_email(email)
        if not _EMAIL.match(email):
            raise InvalidRequest(f"email: {email!r} is not an email address", param="email")
        if password is not None and len(password) < 8:
            raise InvalidRequest("password: must be at least 8 characters", param="password")
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
        return user

    def create_key(self, user_id: uuid.UUID) -> str:
        """A new API key for ``user_id``; the only time its full text exists."""
        prefix = "".join(secrets.choice("abcdefghijkmnopqrstuvwxyz23456789") for _ in range(12))
        secret = secrets.token_urlsafe(32)
        with self.sessions.begin() as session:
            session.add(ApiKey(user_id=user_id, prefix=prefix, secret_hash=_digest(secret)))
        return f"hb_{prefix}_{secret}"

    def revoke_key(self, key_or_prefix: str) -> None:
        match = _KEY.match(key_or_prefix)
        prefix = match[1] if match else key_or_prefix.removeprefix("hb_").rstrip("_")
        with self.sessions.begin() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
            if row is None:
                raise NotFound(f"no API key with prefix {prefix}")
            row.revoked_at = row.revoked_at or datetime.now(UTC)

    def user_for_key(self, key: str) -> User:
        """The owner of a valid, unrevoked API key, or AuthFailed."""
        match = _KEY.match(key.strip())
        if match is None:
            raise AuthFailed("invalid API key")
        with self.sessions() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.prefix == match[1]))
            if (
                row is None
                or row.revoked_at is not None
                or not hmac.compare_digest(row.secret_hash, _digest(match[2]))
            ):
                raise AuthFailed("invalid API key")
            return session.get_one(User, row.user_id)
