"""Queue position and ETA, from the live queue and measured speed.

Speed is seconds per unit of work (steps × pixels × images), averaged over the last finished
tasks of the same model (any model while a model has no history yet), so the estimate adapts
to the hardware the workers actually have. ETA = work ahead × speed ÷ live workers + this
task's own remaining work × its model's speed.
"""

from __future__ import annotations

import time
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session

from huabu.settings import Settings

#: Seconds per work unit before anything has finished: a 2-core CPU on the demo model.
_DEFAULT_SPEED = 4e-6
_SPEED_TTL = 10.0

_SPEED = text(
    """
    SELECT sum(extract(epoch FROM finished_at - started_at)) / nullif(sum(work), 0)
      FROM (SELECT finished_at, started_at, work FROM tasks
             WHERE state = 'succeeded' AND (CAST(:model AS text) IS NULL OR model = :model)
               AND started_at IS NOT NULL
             ORDER BY finished_at DESC LIMIT 20) recent
    """
)
_AHEAD = text(
    """
    SELECT count(*) FILTER (WHERE t.state = 'queued'),
           coalesce(sum(CASE WHEN t.state = 'queued' THEN t.work
                             ELSE t.work * (1 - t.step::float / greatest(t.total, 1)) END), 0)
      FROM tasks t
     WHERE t.state IN ('queued', 'running') AND t.queue = :queue AND t.id <> :id
       AND (t.state = 'running' OR t.job_id < :job_id)
    """
)
_WORKERS = text(
    "SELECT count(*) FROM procrastinate_workers "
    "WHERE last_heartbeat > now() - make_interval(secs => :stalled)"
)


class EtaEstimator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._speeds: dict[str | None, tuple[float, float]] = {}

    def speed(self, session: Session, model: str | None) -> float:
        """Seconds per work unit for ``model`` (None: all models), cached for a few seconds."""
        cached = self._speeds.get(model)
        now = time.monotonic()
        if cached and now - cached[1] < _SPEED_TTL:
            return cached[0]
        value = session.execute(_SPEED, {"model": model}).scalar()
        if value is None:
            value = self.speed(session, None) if model is not None else _DEFAULT_SPEED
        self._speeds[model] = (float(value), now)
        return float(value)

    def live_workers(self, session: Session) -> int:
        return session.execute(_WORKERS, {"stalled": self.settings.stalled_seconds}).scalar_one()

    def estimate(
        self,
        session: Session,
        *,
        task_id: uuid.UUID,
        queue: str,
        job_id: int | None,
        state: str,
        model: str,
        work: float,
        step: int,
        total: int,
    ) -> tuple[int | None, float | None]:
        """(tasks ahead in the queue or None if running, seconds to finish or None)."""
        own = work * (1 - step / total if total else 1) * self.speed(session, model)
        if state == "running":
            return None, round(own, 2)
        ahead, ahead_work = session.execute(
            _AHEAD, {"queue": queue, "id": task_id, "job_id": job_id or 0}
        ).one()
        workers = self.live_workers(session)
        if not workers:
            return ahead, None
        wait = ahead_work * self.speed(session, None) / workers
        return ahead, round(wait + own, 2)
