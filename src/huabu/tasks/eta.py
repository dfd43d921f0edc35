"""Queue position and ETA, from the live queue and measured speed.

Speed is worker-seconds per unit of work (steps × pixels × images), averaged over the last
finished tasks of the same model (any model while a model has no history yet), so the estimate
adapts to the hardware the workers actually have. A task that shared its denoising loop with
others (``worker.batcher``) counts its share of the loop's time, by work: a batch of 4 equal
tasks that took 2 s counts 0.5 s for each. ETA = work ahead × speed ÷ live workers + this
task's own run, which lasts as long as its batch: the batch's remaining work × its model's
speed while it runs; its own work × speed × the recent average batch size while queued.
Speeds and the worker count are cached for a moment: an estimate needs no precision worth a
database round trip per poll.
"""

from __future__ import annotations

import bisect
import threading
import time

from sqlalchemy import text
from sqlalchemy.orm import Session

from huabu.settings import Settings

#: Seconds per work unit before anything has finished: a 2-core CPU on the demo model.
_DEFAULT_SPEED = 4e-6
_SPEED_TTL = 10.0
_WORKERS_TTL = 1.0

_SPEED = text(
    """
    SELECT sum(extract(epoch FROM finished_at - started_at) * work
               / greatest(coalesce(batch_work, work), work))
             / nullif(sum(work), 0), avg(batch_size)
      FROM (SELECT finished_at, started_at, work, batch_size, batch_work FROM tasks
             WHERE state = 'succeeded' AND (CAST(:model AS text) IS NULL OR model = :model)
               AND started_at IS NOT NULL
             ORDER BY finished_at DESC LIMIT 20) recent
    """
)
#: Live task workers (huabu's own rows: procrastinate's also list every server's service-job
#: worker, which runs no tasks).
_WORKERS = text(
    "SELECT count(*) FROM workers "
    "WHERE stopped_at IS NULL AND last_seen > now() - make_interval(secs => :stalled)"
)

#: Live workers that take ``kind`` and can serve ``model`` (hold it, or it is published).
_SERVING = text(
    """
    SELECT count(*) FROM workers w
     WHERE w.stopped_at IS NULL AND w.last_seen > now() - make_interval(secs => :stalled)
       AND jsonb_exists(w.kinds, :kind)
       AND (jsonb_exists(w.models, 'checkpoints/' || :model)
            OR EXISTS (SELECT 1 FROM models m WHERE m.kind = 'checkpoints'
                        AND m.name = :model AND m.published_at IS NOT NULL))
    """
)

_LIVE = text(
    """
    SELECT priority, fair_rank, job_id, state,
           work * (1 - step::float / greatest(total, 1)) AS remaining
      FROM tasks WHERE state IN ('queued', 'running') AND queue = :queue
    """
)
_SNAPSHOT_TTL = 0.5


#: Where a queued task stands: its level (negated: higher first), its fair rank, then its
#: job's id (``tasks.fairness``).
Place = tuple[int, int, int]


class _QueueSnapshot:
    """The live queue, read in one query at most twice a second and shared by every poll:
    position and work ahead become a binary search instead of a scan per request."""

    def __init__(self, rows: list[tuple[int, int, int | None, str, float]]) -> None:
        queued = sorted(
            ((-level, rank, job_id or 0), remaining)
            for level, rank, job_id, state, remaining in rows
            if state == "queued"
        )
        self.places = [place for place, _ in queued]
        self.prefix = [0.0]
        for _, remaining in queued:
            self.prefix.append(self.prefix[-1] + remaining)
        self.running_work = sum(left for *_, state, left in rows if state == "running")
        self.newest_job = max((row[2] or 0 for row in rows), default=0)
        self.taken = time.monotonic()

    def stale_for(self, place: Place | None) -> bool:
        """Too old, or older than the job asked about (it was queued after this was read)."""
        job_id = place[2] if place else 0
        return time.monotonic() - self.taken > _SNAPSHOT_TTL or job_id > self.newest_job

    def ahead(self, place: Place | None) -> tuple[int, float]:
        """Queued tasks ahead of the one at ``place`` (jobs run by level, then in fair-rank
        order, then id order; None: a job not queued yet, behind all of them) and the work
        ahead, running tasks' remainder included."""
        count = len(self.places) if place is None else bisect.bisect_left(self.places, place)
        return count, self.prefix[count] + self.running_work


class EtaEstimator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._speeds: dict[str | None, tuple[float, float, float]] = {}
        self._workers: tuple[int, float] | None = None
        self._serving: dict[tuple[str, str], tuple[int, float]] = {}
        self._snapshots: dict[str, _QueueSnapshot] = {}
        self._lock = threading.Lock()

    def speed(self, session: Session, model: str | None) -> float:
        """Worker-seconds per work unit for ``model`` (None: all models)."""
        return self._history(session, model)[0]

    def batch_size(self, session: Session, model: str) -> float:
        """How many tasks ``model``'s recent runs shared their loop with, on average."""
        return self._history(session, model)[1]

    def _history(self, session: Session, model: str | None) -> tuple[float, float]:
        cached = self._speeds.get(model)
        now = time.monotonic()
        if cached and now - cached[2] < _SPEED_TTL:
            return cached[0], cached[1]
        speed, batch = session.execute(_SPEED, {"model": model}).one()
        if speed is None:
            speed, batch = (
                self._history(session, None) if model is not None else (_DEFAULT_SPEED, 1.0)
            )
        self._speeds[model] = (float(speed), float(batch), now)
        return float(speed), float(batch)

    def live_workers(self, session: Session) -> int:
        now = time.monotonic()
        if self._workers is None or now - self._workers[1] > _WORKERS_TTL:
            count = session.execute(_WORKERS, {"stalled": self.settings.stalled_seconds}).scalar()
            self._workers = (int(count or 0), now)
        return self._workers[0]

    def serving(self, session: Session, kind: str, model: str) -> int:
        """Live workers that can run a ``kind`` task for checkpoint ``model``."""
        now = time.monotonic()
        cached = self._serving.get((kind, model))
        if cached is None or now - cached[1] > _WORKERS_TTL:
            count = session.execute(
                _SERVING,
                {"stalled": self.settings.stalled_seconds, "kind": kind, "model": model},
            ).scalar()
            cached = self._serving[(kind, model)] = (int(count or 0), now)
        return cached[0]

    def ahead(self, session: Session, queue: str, place: Place | None) -> tuple[int, float]:
        """(queued tasks ahead of ``place``, work ahead including running tasks' remainder),
        at most half a second old."""
        snapshot = self._snapshots.get(queue)
        if snapshot is None or snapshot.stale_for(place):
            with self._lock:  # one refresh at a time; the others use the fresh result
                snapshot = self._snapshots.get(queue)
                if snapshot is None or snapshot.stale_for(place):
                    rows = session.execute(_LIVE, {"queue": queue}).all()
                    snapshot = self._snapshots[queue] = _QueueSnapshot([tuple(r) for r in rows])
        return snapshot.ahead(place)

    def estimate(
        self,
        session: Session,
        *,
        state: str,
        kind: str,
        model: str,
        work: float,
        step: int,
        total: int,
        ahead_work: float,
        batch_work: float | None = None,
    ) -> float | None:
        """Seconds until the task finishes, or None when no live worker can run it (none
        is alive, or none that takes its kind can serve its model). ``batch_work``: the work
        of the batch a running task is part of."""
        left = 1 - step / total if total else 1
        if state == "running":
            return round(max(batch_work or 0.0, work) * left * self.speed(session, model), 2)
        own = work * left * self.speed(session, model) * self.batch_size(session, model)
        workers = self.live_workers(session)
        if not workers or not self.serving(session, kind, model):
            return None
        return round(ahead_work * self.speed(session, None) / workers + own, 2)
