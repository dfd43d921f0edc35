"""Cross-request batching, the queue's half: which queued jobs join the one a worker took.

procrastinate hands a worker one job (``worker.router``). When that job's task can share its
denoising loop (``tasks.batch_key``, from ``GenerationRequest.batch_key``), the worker takes
up to ``HUABU_MAX_BATCH - 1`` more queued jobs of the same key and queue, in the fair order
(``tasks.fairness``), waiting at most ``HUABU_BATCH_WAIT_MS`` for them to arrive. It takes
them as procrastinate's fetch does (status ``doing``, this worker's id, rows locked with SKIP
LOCKED), so another worker's reaper gives them back if this worker dies, and it claims each
task in the same transaction, so a job is never taken without its task being claimed.

A joined job is this worker's to end: the runner deletes it with its task's final write
(as procrastinate deletes a successful job), or hands the task over to a new job.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.settings import Settings

T = TypeVar("T")

#: Poll interval while a batch waits for more jobs.
_POLL_SECONDS = 0.02

_TAKE = text(
    """
    UPDATE procrastinate_jobs SET status = 'doing', worker_id = :worker
     WHERE id IN (SELECT j.id FROM procrastinate_jobs j JOIN tasks t ON t.job_id = j.id
                   WHERE t.state = 'queued' AND t.batch_key = :key AND j.status = 'todo'
                     AND j.queue_name = :queue AND j.lock IS NULL
                     AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
                   ORDER BY j.priority DESC, j.id
                   LIMIT :room
                     FOR UPDATE OF j SKIP LOCKED)
    RETURNING id, priority, args ->> 'task_id'
    """
)
#: A joined job whose task is not this worker's to run after all (cancelled meanwhile).
END_JOINED = text("DELETE FROM procrastinate_jobs WHERE id = :job AND status = 'doing'")


class Batcher:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def join(
        self,
        queue: str,
        worker_id: int,
        key: str,
        claim: Callable[[Session, uuid.UUID, int], T | None],
        stopping: threading.Event,
    ) -> list[T]:
        """The claims of the jobs of batch key ``key`` in ``queue`` that join a run:
        ``claim(session, task_id, job_id)`` claims a task in the transaction that takes its
        job, or returns None (the task moved on; its job is ended here)."""
        room = self.settings.max_batch - 1
        if room <= 0:
            return []
        deadline = time.monotonic() + self.settings.batch_wait_ms / 1000
        joined: list[T] = []
        while True:
            with self.sessions.begin() as session:
                taken = session.execute(
                    _TAKE, {"worker": worker_id, "key": key, "queue": queue, "room": room}
                ).all()
                for job_id, _, task in sorted(taken, key=lambda row: (-row[1], row[0])):
                    claimed = claim(session, uuid.UUID(task), job_id)
                    if claimed is None:
                        session.execute(END_JOINED, {"job": job_id})
                    else:
                        joined.append(claimed)
                        room -= 1
            left = deadline - time.monotonic()
            if room <= 0 or left <= 0 or stopping.is_set():
                return joined
            stopping.wait(min(_POLL_SECONDS, left))
