"""The job half of a task: procrastinate jobs, deferred in the caller's transaction.

huabu defers by calling procrastinate's own SQL function inside the transaction that inserts
the task row, so a task never exists without its job nor a job without its task — something
procrastinate's Python ``defer`` (which commits on its own connection) cannot promise.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import text
from sqlalchemy.orm import Session

from huabu.tasks.fairness import BAND

#: The procrastinate task name and the task's queue (``tasks.queue``) for each kind of task.
TASK_NAMES = {"generate": "huabu.generate", "train": "huabu.train"}
QUEUES = {"generate": "generate", "train": "train"}
_MAX_QUEUE_NAME = 128  # procrastinate's column


def job_queue(kind: str, model: str) -> str:
    """The procrastinate queue of a task's job: its kind and checkpoint (``generate/demo``),
    so that a worker takes only jobs for checkpoints it can serve (see ``worker.router``).
    A name too long for the column goes by its hash (migration 0007 spells the same rule)."""
    name = f"{kind}/{model}"
    if len(name) <= _MAX_QUEUE_NAME:
        return name
    return f"{kind}/#{hashlib.sha256(model.encode()).hexdigest()[:40]}"


#: Defers one job (bind ``job_queue``, ``task_name``, ``priority``, ``rank``, ``args``);
#: selects its id as ``id``. procrastinate hands out jobs by priority, highest first, then by
#: id: the job's priority is the task's level in bands of ``fairness.BAND``, less its fair
#: rank (see ``tasks.fairness``).
DEFER_SQL = (
    "SELECT unnest(procrastinate_defer_jobs_v1(ARRAY[ROW("
    f":job_queue, :task_name, CAST(CAST(:priority AS bigint) * {BAND} - CAST(:rank AS bigint) "
    "AS integer), NULL, NULL, CAST(:args AS jsonb), NULL"
    ")::procrastinate_job_to_defer_v1])) AS id"
)
_CANCEL = text("SELECT procrastinate_cancel_job_v1(:job_id, false, false)")
_NOTIFY = text("SELECT pg_notify('huabu_tasks', :task_id)")
#: The channel task changes are announced on (payload: the task id), see ``events``.
CHANNEL = "huabu_tasks"


#: Back to the queue. Fenced either by the run (only if that run still has the task)
#: or by the job (only if that job is still the task's, whether it got to run or not).
_REQUEUE = text(
    """
    UPDATE tasks SET state = 'queued', step = 0,
           attempts = attempts - CASE WHEN state = 'running' THEN :forgive ELSE 0 END
     WHERE id = :id
       AND ((CAST(:run AS integer) IS NOT NULL AND state = 'running'
             AND runs = CAST(:run AS integer))
         OR (CAST(:job AS bigint) IS NOT NULL AND state IN ('queued', 'running')
             AND job_id = CAST(:job AS bigint)))
    RETURNING kind, model, job_id, fair_rank, priority
    """
)
#: The old job ends without touching any other: a worker that still holds it can no longer
#: finish or retry it (procrastinate refuses, and the worker logs that), and the new job is
#: a different row that nothing of the old run can reach.
_END_JOB = text(
    "UPDATE procrastinate_jobs SET status = 'aborted' "
    "WHERE id = :job AND status IN ('todo', 'doing')"
)
_NEW_JOB = text(f"UPDATE tasks SET job_id = ({DEFER_SQL}) WHERE id = :id")
#: The task row first, then its jobs: every hand-over locks in that order, so a reaper and
#: the worker handing back its own run wait for each other instead of deadlocking.
_LOCK_TASK = text("SELECT 1 FROM tasks WHERE id = :id FOR UPDATE")
_CLOSE_RUN = text(
    "UPDATE task_runs SET ended_at = now(), outcome = :outcome "
    "WHERE task_id = :id AND ended_at IS NULL"
)


def hand_over(
    session: Session,
    task_id: object,
    *,
    outcome: str,
    forgive: bool,
    run: int | None = None,
    job: int | None = None,
) -> bool:
    """Give a task to whichever worker takes it next: back to the queue with a new job, its
    old job ended, its open run closed with ``outcome``. Fenced by ``run`` (a worker handing
    back its own run) or by ``job`` (a reaper: the stalled job, which is ended in any case).
    ``forgive`` un-counts the attempt (the task was not at fault). False if nothing was
    handed over: the task had moved on (finished, or another run has it)."""
    session.execute(_LOCK_TASK, {"id": task_id})
    if job is not None:
        session.execute(_END_JOB, {"job": job})
    row = session.execute(
        _REQUEUE, {"id": task_id, "run": run, "job": job, "forgive": int(forgive)}
    ).one_or_none()
    if row is None:
        return False
    kind, model, current, rank, priority = row
    if current is not None and current != job:
        session.execute(_END_JOB, {"job": current})
    session.execute(
        _NEW_JOB,
        {
            "id": task_id,
            "job_queue": job_queue(kind, model),
            "task_name": TASK_NAMES[kind],
            "rank": rank,
            "priority": priority,
            "args": json.dumps({"task_id": str(task_id)}),
        },
    )
    session.execute(_CLOSE_RUN, {"id": task_id, "outcome": outcome})
    announce(session, task_id)
    return True


def cancel_job(session: Session, job_id: int) -> None:
    """Cancel a job that no worker has picked up yet (a running one is stopped via its task)."""
    session.execute(_CANCEL, {"job_id": job_id})


#: The payload's suffix of a notification that only the task's progress changed.
PROGRESS = ":progress"


def announce(session: Session, task_id: object, *, progress: bool = False) -> None:
    """Tell listeners that the task changed, when the transaction commits; ``progress``: only
    its progress (and live preview) did, which long polls need not wake for."""
    session.execute(_NOTIFY, {"task_id": str(task_id) + (PROGRESS if progress else "")})
