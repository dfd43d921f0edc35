"""Running one task on a worker: claim the row, hand it to the handler for its kind, finish.

The runner owns everything kinds share: the claim, the attempt limit, throttled progress
writes that also fetch the cancel flag, cancellation, the hand-back on shutdown, and the final
state. A handler (``generation``, ``training``) only does the work and says what to store.
Handlers must be idempotent: a task re-run after its worker died redoes its work and
overwrites its own outputs, never duplicates them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.errors import Cancelled, HuabuError
from huabu.settings import Settings
from huabu.tasks import queue

log = logging.getLogger("huabu.worker")

#: How often a running task writes its progress and looks for a cancel request.
PROGRESS_INTERVAL = 0.25

_CLAIM = text(
    """
    UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = now(), step = 0
     WHERE id = :id AND state IN ('queued', 'running')
    RETURNING kind, request, attempts, cancel_requested
    """
)
#: For the claim and progress writes only: no wait for the WAL flush. A crash can lose
#: them, which costs nothing: the job is re-run anyway and progress is rewritten.
_NOT_DURABLE = text("SET LOCAL synchronous_commit = off")
_PROGRESS = text(
    "UPDATE tasks SET step = :step, total = :total WHERE id = :id RETURNING cancel_requested"
)
_FINISH = text(
    """
    UPDATE tasks SET state = CAST(:state AS varchar), error = :error,
           result = CAST(:result AS jsonb), finished_at = now(),
           step = CASE WHEN CAST(:state AS varchar) = 'succeeded' THEN total ELSE step END
     WHERE id = :id
    """
)
_REQUEUE = text(
    """
    UPDATE tasks SET state = 'queued', step = 0, attempts = attempts - :forgive
     WHERE id = :id AND state = 'running'
    """
)


class WorkerStopping(Exception):
    """The worker is shutting down mid-task; the task goes back to the queue, uncharged."""


@dataclass(frozen=True)
class Outcome:
    """What a handler produced: the task's ``result`` summary, and rows to write with the
    final state, in the same transaction (``store(session)``), if any."""

    result: dict[str, Any]
    store: Callable[[Session], None] | None = None


class Progress:
    """A handler's step callback: throttled row updates, and the cancel flag they return."""

    def __init__(
        self, sessions: sessionmaker[Session], task_id: uuid.UUID, stopping: threading.Event
    ) -> None:
        self.sessions, self.task_id, self.stopping = sessions, task_id, stopping
        self.cancel_requested = False
        self.last = 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            with self.sessions.begin() as session:
                session.execute(_NOT_DURABLE)
                self.cancel_requested = bool(
                    session.execute(
                        _PROGRESS, {"step": step, "total": total, "id": self.task_id}
                    ).scalar()
                )
                queue.announce(session, self.task_id)

    def should_cancel(self) -> bool:
        return self.cancel_requested or self.stopping.is_set()


class Handler(Protocol):
    """Does one kind of task. Raises HuabuError (the task fails with its message) or
    Cancelled (when ``progress.should_cancel()`` said so)."""

    def __call__(self, task_id: uuid.UUID, data: dict[str, Any], progress: Progress) -> Outcome: ...


class TaskRunner:
    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], handlers: dict[str, Handler]
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.handlers = handlers

    def run(self, task_id: uuid.UUID, stopping: threading.Event) -> None:
        """Run task ``task_id`` to a final state. Raises only WorkerStopping."""
        with self.sessions.begin() as session:
            session.execute(_NOT_DURABLE)
            claimed = session.execute(_CLAIM, {"id": task_id}).one_or_none()
            if claimed is not None:
                queue.announce(session, task_id)
        if claimed is None:
            return  # cancelled while queued, or already finished by an earlier run
        kind, request, attempts, cancel_requested = claimed
        if cancel_requested:
            self._finish(task_id, "cancelled", error="cancelled")
            return
        if attempts > self.settings.max_attempts:
            self._finish(
                task_id,
                "failed",
                error=f"the worker running this task stopped {attempts - 1} times before it "
                "finished (killed, or out of memory); not retrying",
            )
            return
        progress = Progress(self.sessions, task_id, stopping)
        try:
            outcome = self.handlers[kind](task_id, request, progress)
            with self.sessions.begin() as session:
                if outcome.store is not None:
                    outcome.store(session)
                    session.flush()
                self._finish_in(session, task_id, "succeeded", result=outcome.result)
        except Cancelled:
            if stopping.is_set() and not progress.cancel_requested:
                self.requeue(task_id, forgive=True)
                log.info("task %s: worker stopping; handed back to the queue", task_id)
                raise WorkerStopping() from None
            self._finish(task_id, "cancelled", error="cancelled while running")
        except HuabuError as exc:
            cause = exc.__cause__
            if cause is not None:  # the detail behind a stable message: for the log only
                # No traceback: an expected failure is not a bug (tracebacks in the log are).
                log.error("task %s failed: %s (%s: %s)", task_id, exc.message,
                          type(cause).__name__, cause)  # fmt: skip
            self._finish(task_id, "failed", error=exc.message)
        except Exception:
            log.exception("task %s failed", task_id)
            self._finish(
                task_id,
                "failed",
                error=f"internal error while running this {kind} task; the server log has the "
                f"details (task {task_id})",
            )

    def _finish(self, task_id: uuid.UUID, state: str, *, error: str) -> None:
        with self.sessions.begin() as session:
            self._finish_in(session, task_id, state, error=error)

    def _finish_in(
        self,
        session: Session,
        task_id: uuid.UUID,
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        session.execute(
            _FINISH,
            {
                "id": task_id,
                "state": state,
                "error": error,
                "result": json.dumps(result) if result is not None else None,
            },
        )
        queue.announce(session, task_id)

    def requeue(self, task_id: uuid.UUID, *, forgive: bool = False) -> None:
        """Back to the queue; ``forgive`` un-counts the attempt (a clean shutdown, not a crash)."""
        with self.sessions.begin() as session:
            session.execute(_REQUEUE, {"id": task_id, "forgive": int(forgive)})
            queue.announce(session, task_id)
