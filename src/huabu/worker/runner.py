"""Running one task on a worker: claim the row, hand it to the handler for its kind, finish.

The runner owns everything kinds share: the claim, the attempt limit, throttled progress
writes that also fetch the cancel flag, cancellation, the hand-back on shutdown, and the final
state. A handler (``generation``, ``training``) only does the work and says what to store.
Handlers must be idempotent: a task re-run after its worker died redoes its work and
overwrites its own outputs, never duplicates them.

Every write of a run is fenced by its run number: once a task was given to another worker
(this one was presumed dead), this run's progress and final writes match no row, and it stops
without a trace. A database outage does not fail the task: progress writes are skipped until
the database is back, and the final write waits for it, unless this worker's heartbeat has
gone stale meanwhile (``lost``): then the run is abandoned, for its worker to hand back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, cast

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.errors import Cancelled, DatabaseUnavailable, HuabuError, StorageUnavailable
from huabu.native.generation import partial_steps
from huabu.settings import Settings
from huabu.tasks import queue
from huabu.worker import batcher

#: A live preview as the engine hands it out (``engine.previews.Preview``; the queue's side
#: does not import the engine): a PNG made when called, or None.
Preview = Callable[[], "bytes | None"]

log = logging.getLogger("huabu.worker")

#: How often a running task writes its progress and looks for a cancel request.
PROGRESS_INTERVAL = 0.25

_CLAIM = text(
    """
    UPDATE tasks SET state = 'running', attempts = attempts + 1, runs = runs + 1,
           started_at = now(), step = 0, batch_size = 1, batch_work = work
     WHERE id = :id AND state IN ('queued', 'running')
       AND (CAST(:job AS bigint) IS NULL OR job_id = CAST(:job AS bigint))
    RETURNING kind, request, attempts, cancel_requested, runs, batch_key
    """
)
_RUN = text(
    """
    INSERT INTO task_runs (task_id, run, attempt, worker, host, device)
    VALUES (:id, :run, :attempt, :worker, :host, :device)
    """
)
#: When a run that stopped without its final write really stopped (the hand-over that
#: closed it may have come later, from another worker).
_STOPPED = text(
    """
    UPDATE task_runs SET ended_at = LEAST(COALESCE(ended_at, CAST(:when AS timestamptz)),
                                          CAST(:when AS timestamptz)),
           outcome = COALESCE(outcome, 'superseded')
     WHERE task_id = :id AND run = :run
    """
)
_BATCH = text(
    """
    UPDATE tasks SET batch_size = :n,
           batch_work = (SELECT sum(work) FROM tasks WHERE id = ANY(:ids))
     WHERE id = ANY(:ids) AND state = 'running'
    """
)
_END_RUN = text(
    "UPDATE task_runs SET ended_at = now(), outcome = :outcome WHERE task_id = :id AND run = :run"
)
#: For the claim and progress writes only: no wait for the WAL flush. A crash can lose
#: them, which costs nothing: the job is re-run anyway and progress is rewritten.
_NOT_DURABLE = text("SET LOCAL synchronous_commit = off")
_PROGRESS = text(
    """
    UPDATE tasks SET step = :step, total = :total
     WHERE id = :id AND state = 'running' AND runs = :run
    RETURNING cancel_requested
    """
)
#: A running task's newest live preview (``engine.previews``), kept for its run only.
_PREVIEW = text(
    """
    INSERT INTO live_previews (task_id, run, step, image) VALUES (:id, :run, :step, :image)
    ON CONFLICT (task_id) DO UPDATE SET run = :run, step = :step, image = :image
    """
)
_FORGET_PREVIEW = text("DELETE FROM live_previews WHERE task_id = :id")
#: A preview the request asked to keep (``partial_images``): written at its step, unthrottled.
_PARTIAL = text(
    """
    INSERT INTO partial_images (task_id, run, index, step, image)
    VALUES (:id, :run, :index, :step, :image) ON CONFLICT DO NOTHING
    """
)
_FINISH = text(
    """
    UPDATE tasks SET state = CAST(:state AS varchar), error = :error,
           result = CAST(:result AS jsonb), finished_at = now(),
           step = CASE WHEN CAST(:state AS varchar) = 'succeeded' THEN total ELSE step END
     WHERE id = :id AND state = 'running' AND runs = :run
    """
)
_REQUEUE = text(
    """
    UPDATE tasks SET state = 'queued', step = 0, attempts = attempts - 1
     WHERE id = :id AND state = 'running' AND runs = :run
    """
)
#: How long a final write waits between tries while the database is away.
_RETRY_SECONDS = (0.5, 1, 2, 4)


class WorkerStopping(Exception):
    """The worker is shutting down mid-task; the task goes back to the queue, uncharged."""


class RunLost(Exception):
    """This run no longer owns its task: another worker has it, or this worker lost its
    heartbeat and abandoned it (see ``TaskRunner.stopped``). Nothing more was written."""


@dataclass(frozen=True)
class WorkerId:
    """Who runs a task, as ``task_runs`` records it."""

    name: str
    host: str
    device: str


@dataclass(frozen=True)
class Outcome:
    """What a handler produced: the task's ``result`` summary, and rows to write with the
    final state, in the same transaction (``store(session)``), if any."""

    result: dict[str, Any]
    store: Callable[[Session], None] | None = None


class Progress:
    """A handler's step callback: throttled row updates, and the cancel flag they return.
    While the database is away the work goes on and progress is written again once it is
    back; a write that matches no row means another worker has the task."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        task_id: uuid.UUID,
        run: int,
        stopping: threading.Event,
        lost: threading.Event,
        *,
        preview_every: float = 0.0,
        partials: int = 0,
    ) -> None:
        self.sessions, self.task_id, self.run = sessions, task_id, run
        self.stopping, self.lost = stopping, lost
        self.cancel_requested = False
        self.superseded = False
        self.last = 0.0
        #: Seconds between live previews (0: none), and when the last one was written.
        self.preview_every, self.last_preview = preview_every, 0.0
        #: How many previews to keep at steps spread over the run, and how many are kept.
        self.partials, self.kept = partials, 0

    def __call__(self, step: int, total: int, preview: Preview | None = None) -> None:
        now = time.monotonic()
        if self.lost.is_set():
            return
        if self.partials and preview is not None and self._keep(step, total, preview):
            return
        if now - self.last < PROGRESS_INTERVAL:
            return
        self.last = now
        extra = None
        if (
            preview is not None
            and self.preview_every
            and now - self.last_preview >= (self.preview_every)
        ):
            self.last_preview = now
            extra = (_PREVIEW, {"image": preview()})
        # On a database outage: logged where the engine noticed it; written at the next interval.
        self._write(step, total, extra)

    def _keep(self, step: int, total: int, preview: Preview) -> bool:
        """At (or first past) the next of the request's partial-image steps: keep this
        preview, with the progress; whether it was kept (else the next step tries again)."""
        steps = partial_steps(self.partials, total)
        if self.kept >= len(steps) or step < steps[self.kept]:
            return False
        if not self._write(step, total, (_PARTIAL, {"index": self.kept, "image": preview()})):
            return False
        self.kept += 1
        self.last = time.monotonic()
        return True

    def _write(self, step: int, total: int, extra: tuple[Any, dict[str, Any]] | None) -> bool:
        """The progress, with ``extra`` (a statement and its values: a preview), in one
        transaction, and the cancel flag it returns; False while the database is away."""
        values = {"step": step, "total": total, "id": self.task_id, "run": self.run}
        try:
            with self.sessions.begin() as session:
                session.execute(_NOT_DURABLE)
                row = session.execute(_PROGRESS, values).one_or_none()
                if row is None:
                    self.superseded = True
                    return True
                self.cancel_requested = bool(row[0])
                if extra is not None:
                    session.execute(extra[0], values | extra[1])
                queue.announce(session, self.task_id, progress=True)
        except DatabaseUnavailable:
            return False
        return True

    def dropped(self) -> bool:
        """Whether this run's results are not to be kept: its task was cancelled, or is
        another run's now (a worker stopping keeps what it finished)."""
        return self.cancel_requested or self.superseded or self.lost.is_set()

    def should_cancel(self) -> bool:
        return (
            self.cancel_requested or self.stopping.is_set() or self.superseded or self.lost.is_set()
        )


class Handler(Protocol):
    """Does one kind of task. Raises HuabuError (the task fails with its message) or
    Cancelled (when ``progress.should_cancel()`` said so)."""

    def __call__(self, task_id: uuid.UUID, data: dict[str, Any], progress: Progress) -> Outcome: ...


#: One task of a batch: its id, request and progress.
BatchItem = tuple[uuid.UUID, dict[str, Any], Progress]


class BatchHandler(Handler, Protocol):
    """A handler that can run several tasks in one go (``worker.batcher``): one Outcome or
    exception per item, in order; raises Cancelled only when every item was to stop."""

    def batch(self, items: list[BatchItem]) -> list[Outcome | Exception]: ...


#: Gathers the tasks that join a claimed one (``worker.batcher.Batcher.join`` bound to its
#: queue and this worker): given its batch key and the claim function, returns their claims.
Gather = Callable[[str, Callable[[Session, uuid.UUID, int], "_Claim | None"]], list["_Claim"]]


@dataclass(frozen=True)
class _Claim:
    """A task this worker has claimed, and this run of it. ``joined``: its job was not handed
    out by procrastinate but joined a batch (``worker.batcher``); this worker ends it."""

    task_id: uuid.UUID
    job_id: int | None
    kind: str
    request: dict[str, Any]
    attempt: int
    cancel_requested: bool
    run: int
    batch_key: str | None = None  # None: it runs alone
    joined: bool = False


class TaskRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        handlers: dict[str, Handler],
        worker: WorkerId,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.handlers = handlers
        self.worker = worker
        #: Runs that stopped without their final write: (task id, run, when it stopped,
        #: whether this worker gave it up). ``settle`` records them once the database answers.
        self.stopped: list[tuple[uuid.UUID, int, datetime, bool]] = []
        #: The task running now, if any (the worker advertises it; the first of a batch).
        self.current: uuid.UUID | None = None
        self._settling = threading.Lock()

    def run(
        self,
        task_id: uuid.UUID,
        stopping: threading.Event,
        lost: threading.Event,
        job_id: int | None = None,
        gather: Gather | None = None,
    ) -> None:
        """Run task ``task_id`` (of job ``job_id``) to a final state, with the tasks that
        ``gather`` joins to it when its handler batches. Raises WorkerStopping (handed back to
        the queue), RunLost, or DatabaseUnavailable before it claimed."""
        with self.sessions.begin() as session:
            claim = self._claim(session, task_id, job_id)
        if claim is None:
            return  # cancelled while queued, finished by an earlier run, or not this job's
        self.current = task_id
        try:
            if not self._runs(claim, lost):
                return
            claims, handler = [claim], self.handlers[claim.kind]
            if gather is not None and claim.batch_key is not None and hasattr(handler, "batch"):
                joined = gather(
                    claim.batch_key,
                    lambda session, task, job: self._claim(session, task, job, True),
                )
                claims += [c for c in joined if self._runs(c, lost)]
                if len(claims) > 1:
                    self._record_batch(claims)
            self._run_claims(handler, claims, stopping, lost)
        finally:
            self.current = None

    def _claim(
        self, session: Session, task_id: uuid.UUID, job_id: int | None, joined: bool = False
    ) -> _Claim | None:
        session.execute(_NOT_DURABLE)
        row = session.execute(_CLAIM, {"id": task_id, "job": job_id}).one_or_none()
        if row is None:
            return None
        kind, request, attempt, cancel_requested, run, key = row
        claim = _Claim(task_id, job_id, kind, request, attempt, cancel_requested, run, key, joined)
        session.execute(
            _RUN,
            {
                "id": task_id,
                "run": claim.run,
                "attempt": claim.attempt,
                "worker": self.worker.name,
                "host": self.worker.host,
                "device": self.worker.device,
            },
        )
        queue.announce(session, task_id)
        return claim

    def _record_batch(self, claims: list[_Claim]) -> None:
        """How many tasks share this run (for their ETAs); progress-grade, not durable."""
        try:
            with self.sessions.begin() as session:
                session.execute(_NOT_DURABLE)
                session.execute(_BATCH, {"ids": [c.task_id for c in claims], "n": len(claims)})
        except DatabaseUnavailable:
            pass  # an ETA a little off; the run goes on

    def _runs(self, claim: _Claim, lost: threading.Event) -> bool:
        """Whether the claimed task is to run; if not (cancelled while queued, or crashed too
        often), it is finished here."""
        final = _Final(self, claim, lost)
        try:
            if claim.cancel_requested:
                final.finish("cancelled", error="cancelled")
                return False
            if claim.attempt > self.settings.max_attempts:
                final.finish(
                    "failed",
                    error=f"the worker running this task stopped {claim.attempt - 1} times "
                    "before it finished (killed, or out of memory); not retrying",
                )
                return False
        except RunLost:
            if not claim.joined:
                raise
            return False  # settled with the stopped runs
        return True

    def _run_claims(
        self,
        handler: Handler,
        claims: list[_Claim],
        stopping: threading.Event,
        lost: threading.Event,
    ) -> None:
        progress = [
            Progress(
                self.sessions,
                c.task_id,
                c.run,
                stopping,
                lost,
                preview_every=self.settings.preview_seconds,
                partials=int(c.request.get("partial_images") or 0) if c.kind == "generate" else 0,
            )
            for c in claims
        ]
        results: list[Outcome | Exception]
        if len(claims) == 1:
            first = claims[0]
            results = [outcome_of(partial(handler, first.task_id, first.request, progress[0]))]
        else:
            items = [(c.task_id, c.request, p) for c, p in zip(claims, progress, strict=True)]
            try:
                results = cast(BatchHandler, handler).batch(items)
            except Cancelled as exc:
                results = [exc] * len(claims)
        stops: list[Exception] = []
        for claim, mine, result in zip(claims, progress, results, strict=True):
            try:
                self._conclude(claim, mine, result, stopping, lost)
            except (RunLost, WorkerStopping) as exc:
                stops.append(exc)
        # The worker's own job (the first) is retried by procrastinate on WorkerStopping;
        # a RunLost anywhere makes the worker settle the stopped runs.
        if stops:
            raise next((e for e in stops if isinstance(e, WorkerStopping)), stops[0])

    def _conclude(
        self,
        claim: _Claim,
        progress: Progress,
        result: Outcome | Exception,
        stopping: threading.Event,
        lost: threading.Event,
    ) -> None:
        task_id, attempt = claim.task_id, claim.attempt
        final = _Final(self, claim, lost)
        try:
            if isinstance(result, Exception):
                raise result
            final.finish("succeeded", result=result.result, store=result.store)
        except Cancelled:
            if progress.superseded or lost.is_set():
                raise final.lost() from None
            if stopping.is_set() and not progress.cancel_requested:
                final.write(self._hand_back if not claim.joined else self._hand_over)
                log.info("task %s: worker stopping; handed back to the queue", task_id)
                if not claim.joined:  # procrastinate retries the worker's own job
                    raise WorkerStopping() from None
                return
            final.finish("cancelled", error="cancelled while running")
        except (RunLost, WorkerStopping):
            raise
        except DatabaseUnavailable:
            # A handler's own read, with the database away: nobody else has this run, so it
            # goes back to the queue once the database answers (as a lost heartbeat's does).
            raise final.lost(abandoned=True) from None
        except StorageUnavailable as exc:
            if attempt >= self.settings.max_attempts:
                final.finish("failed", error=exc.message)
                return
            # The store may come back: wait a little (this worker could not store anything
            # meanwhile either), then queue again, charged; nothing of this run was served.
            log.warning(
                "task %s: %s; queued again (attempt %d of %d)",
                task_id,
                exc.message,
                attempt,
                self.settings.max_attempts,
            )
            stopping.wait(min(30.0, 2.0**attempt))
            reason = exc.message
            final.write(
                lambda session, task, run: queue.hand_over(
                    session, task, outcome=reason, forgive=False, run=run
                )
            )
        except HuabuError as exc:
            cause = exc.__cause__
            if cause is not None:  # the detail behind a stable message: for the log only
                # No traceback: an expected failure is not a bug (tracebacks in the log are).
                log.error(
                    "task %s failed: %s (%s: %s)", task_id, exc.message, type(cause).__name__, cause
                )
            final.finish("failed", error=exc.message)
        except Exception as exc:
            log.error("task %s failed", task_id, exc_info=exc)
            final.finish(
                "failed",
                error=f"internal error while running this {claim.kind} task; the server log "
                f"has the details (task {task_id})",
            )

    def settle(self) -> None:
        """Record the runs that stopped without a final write: when each really stopped
        (``task_runs.ended_at``), and the ones this worker gave up go back to the queue
        (unless another worker's reaper did that already). Raises DatabaseUnavailable while
        the database is away; what is left is settled at the next call."""
        with self._settling:  # the job's thread and the supervisor may both call this
            while self.stopped:
                task_id, run, when, abandoned = self.stopped[0]
                with self.sessions.begin() as session:
                    if abandoned and queue.hand_over(
                        session, task_id, outcome="abandoned", run=run, forgive=True
                    ):
                        log.info("task %s: handed back to the queue", task_id)
                    session.execute(_STOPPED, {"id": task_id, "run": run, "when": when})
                self.stopped.pop(0)

    @staticmethod
    def _hand_over(session: Session, task_id: uuid.UUID, run: int) -> bool:
        """A clean shutdown, for a task that joined a batch: a new job, uncharged."""
        return queue.hand_over(session, task_id, outcome="handed back", forgive=True, run=run)

    def _hand_back(self, session: Session, task_id: uuid.UUID, run: int) -> bool:
        """A clean shutdown: the same job is retried (procrastinate), uncharged."""
        done = _changed(session.execute(_REQUEUE, {"id": task_id, "run": run}))
        session.execute(_END_RUN, {"id": task_id, "run": run, "outcome": "handed back"})
        queue.announce(session, task_id)
        return done


class _Final:
    """The final writes of one run: fenced by its run number, and waiting out a database
    outage for as long as this worker's heartbeat still holds (``lost`` not set)."""

    def __init__(self, runner: TaskRunner, claim: _Claim, lost: threading.Event) -> None:
        self.runner, self.claim, self.lost_event = runner, claim, lost
        self.task_id, self.run = claim.task_id, claim.run

    def lost(self, *, abandoned: bool = False) -> RunLost:
        """This run stops here, remembered for ``settle``: abandoned runs (heartbeat lost, or
        the database gone under the handler) are handed back, fenced by the run number;
        superseded ones belong to another worker already."""
        abandoned = abandoned or self.lost_event.is_set()
        self.runner.stopped.append((self.task_id, self.run, datetime.now(UTC), abandoned))
        if abandoned:
            log.warning(
                "task %s: stopped: this worker lost the database; it is handed back "
                "once the database is reachable",
                self.task_id,
            )
        else:
            log.warning("task %s: stopped: another worker has taken it over", self.task_id)
        return RunLost()

    def write(self, change: Callable[[Session, uuid.UUID, int], bool]) -> None:
        """``change`` in one transaction, retried while the database is away; RunLost if it
        matched no row (the task is not this run's any more) or the heartbeat is lost."""
        waits = iter(_RETRY_SECONDS)
        while not self.lost_event.is_set():
            try:
                with self.runner.sessions.begin() as session:
                    if not change(session, self.task_id, self.run):
                        raise _NoRow
                return
            except _NoRow:
                break
            except DatabaseUnavailable:
                self.lost_event.wait(next(waits, _RETRY_SECONDS[-1]))
        raise self.lost()

    def finish(
        self,
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        store: Callable[[Session], None] | None = None,
    ) -> None:
        def change(session: Session, task_id: uuid.UUID, run: int) -> bool:
            if store is not None:
                store(session)
                session.flush()
            values = {
                "id": task_id,
                "run": run,
                "state": state,
                "error": error,
                "result": json.dumps(result) if result is not None else None,
            }
            if not _changed(session.execute(_FINISH, values)):
                return False  # rolled back with the stored rows
            session.execute(_END_RUN, {"id": task_id, "run": run, "outcome": state})
            session.execute(_FORGET_PREVIEW, {"id": task_id})
            if self.claim.joined:  # procrastinate ends the job it handed out itself
                session.execute(batcher.END_JOINED, {"job": self.claim.job_id})
            queue.announce(session, task_id)
            return True

        self.write(change)


class _NoRow(Exception):
    pass


def _changed(result: Any) -> bool:
    """Whether an UPDATE matched a row (``CursorResult.rowcount``)."""
    return bool(result.rowcount)


def outcome_of(call: Callable[[], Outcome]) -> Outcome | Exception:
    """What ``call`` returned, or the exception it raised (concluded by the runner)."""
    try:
        return call()
    except Exception as exc:
        return exc
