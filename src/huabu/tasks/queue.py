"""The job half of a task: procrastinate jobs, deferred in the caller's transaction.

huabu defers by calling procrastinate's own SQL function inside the transaction that inserts
the task row, so a task never exists without its job nor a job without its task — something
procrastinate's Python ``defer`` (which commits on its own connection) cannot promise.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: The procrastinate task name and queue for each kind of huabu task.
TASK_NAMES = {"generate": "huabu.generate", "train": "huabu.train"}
QUEUES = {"generate": "generate", "train": "train"}

#: Defers one job (bind ``queue``, ``task_name``, ``args``); selects its id as ``id``.
DEFER_SQL = (
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW("
    ":queue, :task_name, 0, NULL, NULL, CAST(:args AS jsonb), NULL"
    ")::procrastinate_job_to_defer_v1])) AS id"
)
_CANCEL = text("SELECT procrastinate_cancel_job_v1(:job_id, false, false)")
_NOTIFY = text("SELECT pg_notify('huabu_tasks', :task_id)")
#: The channel task changes are announced on (payload: the task id), see ``events``.
CHANNEL = "huabu_tasks"


def cancel_job(session: Session, job_id: int) -> None:
    """Cancel a job that no worker has picked up yet (a running one is stopped via its task)."""
    session.execute(_CANCEL, {"job_id": job_id})


def announce(session: Session, task_id: object) -> None:
    """Tell listeners (progress streams) that the task changed, when the transaction commits."""
    session.execute(_NOTIFY, {"task_id": str(task_id)})
