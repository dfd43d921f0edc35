"""Turning a request's credentials into a Principal, with a short cache.

Every poll of every client carries its key; looking each one up costs a database round trip.
A few seconds of caching (by the token's digest, never the token) makes polling cheap; the
price is that a revoked key or ended session keeps working on each server for at most
``ttl`` seconds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import time

from huabu.auth.accounts import Accounts, Principal, normalise_email
from huabu.auth.throttle import LoginThrottle
from huabu.db.tables import User
from huabu.errors import AuthFailed

_MAX_ENTRIES = 10_000


def _digest(scheme: str, token: str) -> str:
    """The cache key of a credential: its scheme and a digest of it, never the token."""
    return hashlib.sha256(f"{scheme}:{token}".encode()).hexdigest()


class Authenticator:
    def __init__(
        self,
        accounts: Accounts,
        *,
        anonymous: bool,
        ttl: float = 5.0,
        login_attempts: int = 5,
        login_address_attempts: int = 20,
    ) -> None:
        self.accounts = accounts
        self.anonymous = anonymous
        self.ttl = ttl
        self.throttle = LoginThrottle(login_attempts, login_address_attempts)
        # argon2 takes 64 MiB and tens of ms of CPU per check: two at a time, the rest wait.
        self._hashing = threading.BoundedSemaphore(2)
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self._anonymous: Principal | None = None

    def check_password(self, email: str, password: str, client: str | None = None) -> User:
        """The user whose password this is, or AuthFailed; Overloaded while the account or
        the client's address must wait after wrong passwords (``auth.throttle``)."""
        keys = self.throttle.keys(email, client)
        self.throttle.check(keys)
        try:
            with self._hashing:
                user = self.accounts.check_password(email, password)
        except AuthFailed:
            self.throttle.failed(keys)
            raise
        self.throttle.succeeded(keys)
        return user

    def principal(self, authorization: str | None, client: str | None = None) -> Principal:
        """The caller, from an ``Authorization`` header value (or its absence); ``client``:
        their address, for the wrong-password throttle."""
        if not authorization:
            if self.anonymous:
                return self.anonymous_principal()
            raise AuthFailed("missing credentials: send 'Authorization: Bearer <API key>'")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "basic" and token.strip():
            return self.for_basic(token.strip(), client)
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("credentials must be 'Authorization: Bearer <API key>'")
        return self.for_token(token.strip())

    def cached(self, authorization: str | None) -> Principal | None:
        """The caller if known without a database query (cached token or anonymous), else None."""
        if not authorization:
            return self._anonymous if self.anonymous else None
        scheme, _, token = authorization.strip().partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in ("bearer", "basic") or not token:
            return None  # refused (or not) by ``principal``, never by a cached other scheme
        hit = self._cache.get(_digest(scheme, token))
        return hit[0] if hit and hit[1] > time.monotonic() else None

    def for_token(self, token: str) -> Principal:
        digest = _digest("bearer", token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[1] > now:
            return cached[0]
        principal = self.accounts.principal_for_bearer(token)
        with self._lock:
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.ttl)
        return principal

    def for_basic(self, encoded: str, client: str | None = None) -> Principal:
        """HTTP Basic, as A1111's ``--api-auth`` clients send it: the user's email and either
        their password or one of their API keys. Cached like a token (passwords are slow to
        check on purpose)."""
        digest = _digest("basic", encoded)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached and cached[1] > now:
            return cached[0]
        try:
            email, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, ValueError):  # not base64 (or not ASCII at all), not UTF-8
            raise AuthFailed("Basic credentials are not base64 of 'email:password'") from None
        if secret.startswith("hb_"):
            principal = self.accounts.principal_for_key(secret)
            if principal.email != normalise_email(email):
                raise AuthFailed("wrong email or API key")
        else:
            principal = Principal.of(self.check_password(email, secret, client))
        with self._lock:
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.clear()
            self._cache[digest] = (principal, now + self.ttl)
        return principal

    def forget(self, token: str) -> None:
        """Drop a token from this server's cache at once (logout)."""
        self._cache.pop(_digest("bearer", token), None)

    def anonymous_principal(self) -> Principal:
        if self._anonymous is None:
            self._anonymous = Principal.of(self.accounts.anonymous_user())
        return self._anonymous
