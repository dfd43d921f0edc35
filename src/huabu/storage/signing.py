"""Signed, expiring file URLs: ``/files/<key>?expires=<unix>&sig=<hmac>``.

Clients and SDKs download images without sending credentials, so the URL itself is the
credential: an HMAC over key and expiry, with the installation's secret. Nobody can guess or
enumerate another user's images, and a leaked URL stops working when it expires.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from urllib.parse import quote

from huabu.errors import NotFound
from huabu.settings import Settings


def installation_secret(settings: Settings) -> bytes:
    """``HUABU_SECRET_KEY``, or a random one generated once into ``HUABU_HOME/secret_key``."""
    if settings.secret_key:
        return settings.secret_key.encode()
    path = settings.home.resolve() / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: of two processes starting together, exactly one writes it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        except FileExistsError:
            pass
    for _ in range(50):  # the other process may still be writing it
        secret = path.read_text().strip()
        if secret:
            return secret.encode()
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty")


class UrlSigner:
    def __init__(self, secret: bytes, ttl: int) -> None:
        self.secret = secret
        self.ttl = ttl

    def _signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    def path(self, key: str, *, now: float | None = None) -> str:
        """The signed path (with query) that serves ``key`` until the TTL runs out."""
        expires = int((now or time.time()) + self.ttl)
        return f"/files/{quote(key)}?expires={expires}&sig={self._signature(key, expires)}"

    def verify(self, key: str, expires: int, signature: str) -> None:
        """NotFound for a bad or expired signature: nothing tells a prober which it was."""
        # Bytes, not str: compare_digest refuses a str with non-ASCII characters.
        good = hmac.compare_digest(
            self._signature(key, expires).encode(), signature.encode("utf-8", "replace")
        )
        if not good or expires < time.time():
            raise NotFound("no such file, or the link has expired")
