"""The order queued work runs in: round-robin between users, first come first served within a
user, so one user's hundred queued tasks delay another user's first task by one task, not a
hundred.

Each task gets a rank when it is submitted (start-time fair queuing, with one task as the
unit): the higher of the queue's virtual time, the lowest rank still queued or running, and
one past the submitting user's last unfinished rank. A user's tasks therefore take ranks
n, n+1, n+2 … while a user with nothing queued starts at the queue's current rank, so the
two interleave. Jobs are handed out lowest rank first, then oldest first: procrastinate's
fetch orders by priority (highest first), then id, and a job's priority is its task's rank
negated (``queue.DEFER_SQL``). A task queued again (its worker was lost) keeps its rank.

**Priorities** come first: a task is queued at a level from -9 to 9 (its caller's, set by an
admin on the user or the API key, or lower if the request asks; see ``auth.Principal``), and
higher levels are handed out first; the fair order holds within a level.
The job's priority is ``level × BAND − rank``, so a rank must stay below ``BAND`` (2²⁶, about
67 million tasks queued without the queue ever emptying).

Ranks only compare unfinished tasks, so they start again from 0 whenever the queue empties;
a rank grows only while work stays queued, one per task, far within the integer's range.
Routing (``worker.router``) still prefers the checkpoints a worker has loaded, for at most
``HUABU_MAX_PASS_OVER_SECONDS``: within what a worker takes, the order is this one.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

_RANK = text(
    """
    SELECT greatest(
             coalesce((SELECT min(fair_rank) FROM tasks
                        WHERE state IN ('queued', 'running')), 0),
             coalesce((SELECT max(fair_rank) + 1 FROM tasks
                        WHERE owner_id = :owner AND state IN ('queued', 'running')), 0))
    """
)


#: A level's band of job priorities (procrastinate's are 32-bit integers: 10 × 2²⁶ < 2³¹).
BAND = 2**26


def next_rank(session: Session, owner_id: uuid.UUID) -> int:
    """The rank of a task ``owner_id`` submits now."""
    return int(session.execute(_RANK, {"owner": owner_id}).scalar_one())
