"""Idempotent submits: a client that retries a submit with the same ``Idempotency-Key``
header and the same body gets the task its first try queued, not a second task.

The web layer (``web.idempotency_header``) reads the header of every POST and fingerprints the
request as it is read (SHA-256 of method, path and body); the submitter, which queues every
kind of task through one method, looks the key up in the transaction that would insert the
task. Keys are per user and remembered for 24 hours:
- same key, same fingerprint: the original task, whatever became of it;
- same key, another fingerprint: Conflict (409), naming the header;
- a key older than 24 hours is forgotten and may be used again.
Concurrent tries with one key are serialised on a transaction-scoped advisory lock, so only
one of them queues a task.
"""

from __future__ import annotations

import hashlib
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from huabu.errors import Conflict, InvalidRequest

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
TTL_HOURS = 24

_FIND = text(
    f"""
    SELECT k.task_id, k.fingerprint FROM idempotency_keys k
      JOIN tasks t ON t.id = k.task_id AND t.deleted_at IS NULL
     WHERE k.owner_id = :owner AND k.key = :key
       AND k.created_at > now() - interval '{TTL_HOURS} hours'
    """
)
_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:owner || '/' || :key, 7))")
_REMEMBER = text(
    """
    INSERT INTO idempotency_keys (owner_id, key, fingerprint, task_id)
    VALUES (:owner, :key, :fingerprint, :task)
    ON CONFLICT (owner_id, key) DO UPDATE
       SET fingerprint = excluded.fingerprint, task_id = excluded.task_id,
           created_at = now()
    """
)


@dataclass
class IdempotentRequest:
    """The key a request carries and its fingerprint, fed with the body as it is read. A
    multipart body's boundary (random per try in most clients) does not count: it is
    replaced by a byte no boundary has before hashing."""

    key: str
    boundary: bytes = b""
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _tail: bytes = b""

    def feed(self, chunk: bytes) -> None:
        if not self.boundary:
            self._hash.update(chunk)
            return
        data = (self._tail + chunk).replace(self.boundary, b"\0")
        keep = len(self.boundary) - 1  # what may be the start of a boundary cut by the chunk
        self._hash.update(data[:-keep] if keep else data)
        self._tail = data[-keep:] if keep else b""

    def finish(self) -> None:
        self._hash.update(self._tail)
        self._tail = b""

    @property
    def fingerprint(self) -> str:
        return self._hash.copy().hexdigest()


#: The current request's key, set by the web layer for the request's duration.
CURRENT: ContextVar[IdempotentRequest | None] = ContextVar("idempotency", default=None)


def parse(value: str) -> str:
    """A header value as a key: 1 to 255 printable ASCII characters."""
    key = value.strip()
    if not key or len(key) > MAX_LENGTH or not all(32 <= ord(c) < 127 for c in key):
        raise InvalidRequest(
            f"{HEADER} must be 1 to {MAX_LENGTH} printable ASCII characters "
            f"(got {len(key)} characters)",
            param=HEADER,
        )
    return key


def original(session: Session, owner_id: uuid.UUID) -> uuid.UUID | None:
    """The task the current request's key queued for ``owner_id`` (same body), or None (no
    key, or a key not seen in 24 hours). Locks the key until the transaction ends."""
    current = CURRENT.get()
    if current is None:
        return None
    params = {"owner": str(owner_id), "key": current.key}
    session.execute(_LOCK, params)
    row = session.execute(_FIND, params).one_or_none()
    if row is None:
        return None
    if row.fingerprint != current.fingerprint:
        raise Conflict(
            f"{HEADER} {current.key!r} was used in the last {TTL_HOURS} hours for a different "
            "request; use a new key for a new request",
            param=HEADER,
        )
    return row.task_id


def remember(session: Session, owner_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """Record that the current request's key queued ``task_id``."""
    current = CURRENT.get()
    if current is not None:
        session.execute(
            _REMEMBER,
            {
                "owner": owner_id,
                "key": current.key,
                "fingerprint": current.fingerprint,
                "task": task_id,
            },
        )
