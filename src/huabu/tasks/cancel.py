"""Cancelling a task: a queued one at once, a running one at its worker's next step."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import Task
from huabu.errors import NotFound
from huabu.tasks import queue
from huabu.tasks.reads import parse_id


def cancel_task(
    sessions: sessionmaker[Session], owner_id: uuid.UUID, task_id: str | uuid.UUID
) -> uuid.UUID:
    """Queued: cancelled now. Running: its worker stops at the next step. Finished: as is.
    Returns the task's id; the change is announced, so read caches drop the task."""
    task_id = parse_id(task_id)
    with sessions.begin() as session:
        task = session.scalar(
            select(Task).where(Task.id == task_id, Task.owner_id == owner_id).with_for_update()
        )
        if task is None:
            raise NotFound(f"no task {task_id}")
        if task.state == "queued":
            task.state = "cancelled"
            task.error = "cancelled before it started"
            task.finished_at = datetime.now(UTC)
            if task.job_id is not None:
                queue.cancel_job(session, task.job_id)
            queue.announce(session, task.id)
        elif task.state == "running" and not task.cancel_requested:
            task.cancel_requested = True
            queue.announce(session, task.id)
    return task_id
