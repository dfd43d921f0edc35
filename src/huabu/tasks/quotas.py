"""Quotas: images per day and submits per minute, per user and optionally per API key.

An admin sets them (``huabu users set-quota``, ``huabu keys set-quota`` or the admin API);
unset means no limit. They are checked when a task is queued, in the transaction that inserts
it, after locking the user's row: a user's submits are serialised only while the user (or
the key) has a quota, and then a limit holds exactly however many submits race.

- **Images per day**: the images asked for by the tasks submitted since midnight UTC, except
  tasks that failed or were cancelled (they made nothing the user keeps).
- **Requests per minute**: tasks submitted in the last 60 seconds, whatever became of them.
  Polls, downloads and refused requests are not counted: they queue no work.

Going over is a 429 (``QuotaExceeded``) with ``Retry-After``: when the oldest submit of the
last minute leaves the window, or at midnight UTC.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from huabu.errors import QuotaExceeded

_LIMITS = text(
    """
    SELECT u.images_per_day, u.requests_per_minute, k.images_per_day, k.requests_per_minute
      FROM users u LEFT JOIN api_keys k ON k.id = CAST(:key AS uuid) AND k.user_id = u.id
     WHERE u.id = :owner
    """
)
_LOCK = text("SELECT 1 FROM users WHERE id = :owner FOR UPDATE")
#: Use since midnight UTC, and within the last minute, by the user or by one key.
_USE = text(
    """
    WITH bounds AS (
      SELECT date_trunc('day', clock_timestamp() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
             clock_timestamp() - interval '60 seconds' AS minute)
    SELECT coalesce(sum(images) FILTER (WHERE created_at >= bounds.day
                                          AND state NOT IN ('failed', 'cancelled')), 0),
           count(*) FILTER (WHERE created_at > bounds.minute),
           extract(epoch FROM min(created_at) FILTER (WHERE created_at > bounds.minute)
                              - bounds.minute),
           extract(epoch FROM bounds.day + interval '1 day' - clock_timestamp()),
           bounds.day + interval '1 day'
      FROM bounds LEFT JOIN tasks
        ON tasks.owner_id = :owner
       AND (CAST(:key AS uuid) IS NULL OR tasks.api_key_id = CAST(:key AS uuid))
       AND tasks.created_at >= least(bounds.day, bounds.minute)
     GROUP BY bounds.day, bounds.minute
    """
)


@dataclass(frozen=True)
class Usage:
    """One user's (or key's) use now, and its limits (None: none)."""

    images_today: int
    requests_last_minute: int
    images_per_day: int | None
    requests_per_minute: int | None
    #: Seconds until a submit leaves the minute's window (None: none in it), until midnight UTC.
    minute_frees_in: float | None
    day_ends_in: float
    resets_at: datetime


def limits(
    session: Session, owner_id: uuid.UUID, key_id: uuid.UUID | None
) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """((user's images/day, requests/minute), (the key's))."""
    row = session.execute(_LIMITS, {"owner": owner_id, "key": key_id}).one()
    return (row[0], row[1]), (row[2], row[3])


def usage(session: Session, owner_id: uuid.UUID, key_id: uuid.UUID | None, limit: tuple) -> Usage:
    images, requests, oldest, day_left, resets = session.execute(
        _USE, {"owner": owner_id, "key": key_id}
    ).one()
    return Usage(
        int(images),
        int(requests),
        limit[0],
        limit[1],
        None if oldest is None else float(oldest),
        float(day_left),
        resets,
    )


def check(session: Session, owner_id: uuid.UUID, key_id: uuid.UUID | None, images: int) -> None:
    """Refuse a submit of ``images`` images past a quota, with QuotaExceeded; call inside the
    transaction that inserts the task (it locks the user's row when a quota applies)."""
    mine, key = limits(session, owner_id, key_id)
    scopes: list[tuple[str, uuid.UUID | None, tuple[int | None, int | None]]]
    scopes = [("your", None, mine)]
    if key_id is not None and any(v is not None for v in key):
        scopes.append(("this API key's", key_id, key))
    if all(v is None for _, _, limit in scopes for v in limit):
        return
    session.execute(_LOCK, {"owner": owner_id})
    for whose, scope_key, limit in scopes:
        used = usage(session, owner_id, scope_key, limit)
        per_minute, per_day = limit[1], limit[0]
        if per_minute is not None and used.requests_last_minute + 1 > per_minute:
            raise QuotaExceeded(
                f"{whose} limit of {per_minute} requests per minute is reached; try again in "
                f"{_seconds(used.minute_frees_in)} s",
                retry_after=_seconds(used.minute_frees_in),
            )
        if per_day is not None and used.images_today + images > per_day:
            left = max(0, per_day - used.images_today)
            raise QuotaExceeded(
                f"{whose} quota of {per_day} images per day would be passed: {left} left "
                f"today, this request asks for {images}; it resets at midnight UTC",
                retry_after=_seconds(used.day_ends_in),
            )


def _seconds(value: float | None) -> int:
    return max(1, math.ceil(value or 1))


def current(
    session: Session, owner_id: uuid.UUID, key_id: uuid.UUID | None
) -> tuple[Usage, Usage | None]:
    """The caller's use and limits now, and their key's (None: no key)."""
    mine, key = limits(session, owner_id, key_id)
    return usage(session, owner_id, None, mine), (
        None if key_id is None else usage(session, owner_id, key_id, key)
    )
