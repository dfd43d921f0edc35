"""huabu's error tree. Raised anywhere below the dialect line; each dialect renders it.

HuabuError                      any error a caller should see, with a readable message
├── InvalidRequest(param)       the request is wrong; ``param`` names the offending field
│   ├── TooLarge                the request body is over the configured limit
│   └── Conflict                it contradicts an earlier request (a reused Idempotency-Key)
├── AuthFailed                  credentials missing, wrong or revoked
├── Forbidden                   valid credentials, but not allowed (admins only)
├── NotFound                    unknown id or name (also: exists but is not yours)
├── Overloaded(retry_after)     a queue limit is reached; try again in ``retry_after`` seconds
│   └── QuotaExceeded           the caller's images-per-day or requests-per-minute quota
├── ModelUnavailable            the model exists but cannot be loaded
├── DatabaseUnavailable         the database cannot be reached now; nothing was done
├── StorageUnavailable          the image store (S3) cannot be reached or refused
├── StorageFull                 free space is under HUABU_MIN_FREE_BYTES: no new work
├── Cancelled                   the task was cancelled while running (or while waited for)
├── GenerationFailed            the engine failed on a valid request
├── TaskFailed(task_id)         a task a synchronous call waited for ended failed
└── TaskTimedOut(task_id)       a synchronous call stopped waiting; the task goes on

``task_id``, on every error, names the task the error is about when there is one, so a
synchronous caller can still follow the work it started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def renderable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate a client sent (and an error message
    quotes) becomes its escape, ``\\ud800``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class HuabuError(Exception):
    """Base of every error whose message is meant for the user."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        message = renderable(message)
        super().__init__(message)
        self.message = message
        self.task_id = task_id


class InvalidRequest(HuabuError):
    """A request field is missing, malformed or out of range."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = None if param is None else renderable(param)


class TooLarge(InvalidRequest):
    """The request body (or one uploaded file) is bigger than the server accepts."""


class AuthFailed(HuabuError):
    """Credentials missing, wrong, or revoked (deliberately not saying which)."""


class Forbidden(HuabuError):
    """The caller is known but may not do this (an admin-only route)."""


class NotFound(HuabuError):
    """No such thing, or not the caller's (the two are indistinguishable on purpose)."""


class Overloaded(HuabuError):
    """A per-user or global queue limit is reached; nothing was accepted."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(Overloaded):
    """The caller (or their API key) is over a quota an admin set (``tasks.quotas``)."""


class Conflict(InvalidRequest):
    """The request contradicts one accepted earlier (an ``Idempotency-Key`` reused with
    another body); ``param`` names the header or field."""


class ModelUnavailable(HuabuError):
    """A model file exists but cannot be used (refused format, corrupt, unknown layout)."""


class DatabaseUnavailable(HuabuError):
    """The database is away (restarting, unreachable, refusing connections). Nothing was
    done; the same request can be sent again after ``retry_after`` seconds."""

    retry_after = 5

    def __init__(
        self,
        message: str = "the database is unavailable right now; nothing was done, try again "
        "in a few seconds",
    ) -> None:
        super().__init__(message)


class StorageUnavailable(HuabuError):
    """The image store failed (unreachable, refused, out of space); the message says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"storage unavailable: {reason}")


class StorageFull(HuabuError):
    """The storage's free space is under HUABU_MIN_FREE_BYTES: new work is refused (507)
    rather than failing halfway."""


class WorkerMisconfigured(Exception):
    """Settings that leave a worker nothing to do, or that its device cannot honour (said in
    one line at startup)."""


class Cancelled(HuabuError):
    """Generation stopped because its task was cancelled."""

    def __init__(self, message: str = "cancelled", *, task_id: str | None = None) -> None:
        super().__init__(message, task_id=task_id)


class GenerationFailed(HuabuError):
    """The engine failed on a request that passed validation."""


class TaskFailed(HuabuError):
    """A task ended in failure while a synchronous call waited for it; the message is the
    task's own (user-readable) error."""


class TaskTimedOut(HuabuError):
    """A synchronous call gave up waiting; its task is still queued or running and will finish."""


def first_line(error: BaseException) -> str:
    """An exception's message in one line (libraries' messages often run to several), for
    one-line log records."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def invalid_field(error: Mapping[str, Any], *, prefix: Sequence[str] = ()) -> InvalidRequest:
    """One error as pydantic reports it (an item of ``ValidationError.errors()``) as an
    InvalidRequest naming the field, ``prefix`` first: the one wording every dialect uses."""
    where = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join([*prefix, *where]) or None
    kind = error.get("type")
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    else:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return InvalidRequest(f"{param}: {message}" if param else message, param=param)
