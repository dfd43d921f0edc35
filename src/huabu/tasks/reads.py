"""Reading tasks: one task, the caller's current one, a page of them, the queue's summary.

Every query is scoped to the caller (someone else's task is simply not found) and returns
records, with queue positions and ETAs for unfinished tasks. A read cache serves repeated polls
from memory in processes that follow the tasks' change notifications.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import OrderedDict
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import Task
from huabu.errors import InvalidRequest, NotFound
from huabu.native import GenerationRequest
from huabu.native.training import TrainingPlan
from huabu.settings import Settings
from huabu.tasks.eta import EtaEstimator
from huabu.tasks.fleet import fleet_view
from huabu.tasks.records import UNFINISHED, ImageRecord, TaskRecord

#: How stale a cached unfinished task may be; how many tasks the read cache holds at most, and
#: how long one stays unread before it is dropped. A poll loop reads its task every second or
#: so and stops once it has finished: what nobody read for two minutes is not polled, and the
#: cache stays the size of what is being polled (a finished task with its request and
#: infotexts is several KB: 50,000 of them grew a server by about 2 MB a minute for hours).
CACHE_SECONDS = 1.0
CACHE_ENTRIES = 4096
CACHE_IDLE_SECONDS = 120.0
_IMAGE_FIELDS = (
    "index", "seed", "key", "preview_key", "format", "width", "height", "size_bytes", "infotext"
)  # fmt: skip
#: Tasks with their images and, for queued ones, the work ahead: one round trip per read.
_SELECT_TASKS = f"""
    SELECT t.id, t.owner_id, t.kind, t.origin, t.state, t.model, t.request, t.step, t.total,
           t.work, t.attempts, t.error, t.created_at, t.started_at, t.finished_at, t.queue,
           t.job_id, t.fair_rank, t.priority, t.batch_size, t.batch_work,
           CASE WHEN t.state = 'succeeded' THEN
             (SELECT json_agg(json_build_object({", ".join(f"'{f}', i.{f}" for f in _IMAGE_FIELDS)})
                              ORDER BY i.index)
                FROM task_images i WHERE i.task_id = t.id)
           END AS images,
           CASE WHEN t.state = 'running' THEN
             (SELECT p.image FROM live_previews p WHERE p.task_id = t.id AND p.run = t.runs)
           END AS preview
      FROM tasks t
     WHERE t.deleted_at IS NULL AND ({{where}})
"""
_GET = text(_SELECT_TASKS.format(where="t.id = :id AND t.owner_id = :owner"))
#: The caller's running task, else their oldest queued one.
_CURRENT = text(
    _SELECT_TASKS.format(where="t.owner_id = :owner AND t.state IN ('queued', 'running')")
    + " ORDER BY t.state = 'running' DESC, t.created_at LIMIT 1"
)
_PARTIALS = text(
    """
    SELECT p.index, p.image FROM partial_images p JOIN tasks t ON t.id = p.task_id
     WHERE p.task_id = :id AND t.owner_id = :owner AND p.run = t.runs AND p.index > :after
     ORDER BY p.index
    """
)
#: The typed request of each kind of task.
_REQUESTS: dict[str, type[GenerationRequest] | type[TrainingPlan]] = {
    "generate": GenerationRequest,
    "train": TrainingPlan,
}


def parse_id(value: str | uuid.UUID, what: str = "task") -> uuid.UUID:
    """A UUID, or NotFound: a malformed id is just an id that does not exist."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no {what} {value}") from None


class TaskReads:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        # Reads in autocommit: one round trip per query instead of BEGIN, query, ROLLBACK.
        self.sessions = sessionmaker(
            sessions.kw["bind"].execution_options(isolation_level="AUTOCOMMIT"),
            expire_on_commit=False,
        )
        self.eta = EtaEstimator(settings)
        #: task id → (record, when it was read from the database, when it was last used),
        #: least recently used first.
        self._cache: OrderedDict[uuid.UUID, tuple[TaskRecord, float, float]] | None = None

    def enable_cache(self) -> None:
        """Serve repeated reads from memory. Only for a process that calls ``forget`` on every
        task change notification (see ``events``): then a cached finished task is exact, and
        an unfinished one at most CACHE_SECONDS old (queue positions move without a
        notification of their own)."""
        self._cache = OrderedDict()

    def forget(self, task_id: str | None = None) -> None:
        """Drop one task (or, with None, every task) from the read cache."""
        if self._cache is None:
            return
        if task_id is None:
            self._cache.clear()
            return
        with contextlib.suppress(ValueError, KeyError):
            del self._cache[uuid.UUID(task_id)]

    def peek(self, owner_id: uuid.UUID, task_id: str) -> TaskRecord | None:
        """The task from the read cache if it is there and fresh; never touches the database."""
        if self._cache is None:
            return None
        try:
            key = uuid.UUID(task_id)
            record, fetched, _ = self._cache[key]
        except (ValueError, KeyError):
            return None
        if record.owner_id != owner_id:
            return None
        now = time.monotonic()
        if not record.finished and now - fetched > CACHE_SECONDS:
            return None
        with contextlib.suppress(KeyError):  # another thread may have dropped it meanwhile
            self._cache[key] = (record, fetched, now)
            self._cache.move_to_end(key)
        return record

    def partial_images(
        self, owner_id: uuid.UUID, task_id: uuid.UUID, after: int = -1
    ) -> list[tuple[int, bytes]]:
        """The task's kept partial images (``partial_images``) of its current run, by index,
        those after ``after``: (index, PNG at the latent preview's size)."""
        with self.sessions() as session:
            rows = session.execute(
                _PARTIALS, {"id": task_id, "owner": owner_id, "after": after}
            ).all()
        return [(int(row[0]), bytes(row[1])) for row in rows]

    def get(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> TaskRecord:
        task_id = parse_id(task_id)
        cached = self.peek(owner_id, str(task_id))
        if cached is not None:
            return cached
        with self.sessions() as session:
            row = session.execute(_GET, {"id": task_id, "owner": owner_id}).one_or_none()
            if row is None:
                raise NotFound(f"no task {task_id}")
            record = self.record(session, row._asdict())
        if self._cache is not None:
            self._remember(record)
        return record

    def _remember(self, record: TaskRecord) -> None:
        """Cache ``record``, dropping the least recently used beyond CACHE_ENTRIES and those
        unread for CACHE_IDLE_SECONDS."""
        cache, now = self._cache, time.monotonic()
        assert cache is not None
        # Other threads read and forget at the same time: a key gone meanwhile is fine.
        with contextlib.suppress(KeyError, StopIteration):
            cache[record.id] = (record, now, now)
            cache.move_to_end(record.id)
            while len(cache) > CACHE_ENTRIES or (
                now - cache[next(iter(cache))][2] > CACHE_IDLE_SECONDS
            ):
                cache.popitem(last=False)

    def current(self, owner_id: uuid.UUID) -> TaskRecord | None:
        """The caller's running task, else their oldest queued one, else None."""
        with self.sessions() as session:
            row = session.execute(_CURRENT, {"owner": owner_id}).one_or_none()
            return None if row is None else self.record(session, row._asdict())

    def list(
        self,
        owner_id: uuid.UUID,
        *,
        limit: int = 20,
        cursor: str | None = None,
        offset: int = 0,
        kind: str | None = None,
    ) -> tuple[list[TaskRecord], str | None]:
        """The caller's tasks, newest first, ``limit`` per page; the cursor (or, for APIs that
        page by position, ``offset``) continues a list."""
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"limit must be between 1 and 100, got {limit}", param="limit")
        where = "t.owner_id = :owner"
        params: dict[str, Any] = {"owner": owner_id, "limit": limit + 1, "offset": offset}
        if kind is not None:
            where += " AND t.kind = :kind"
            params["kind"] = kind
        if cursor:
            try:
                params["cursor"] = uuid.UUID(cursor)
            except ValueError:
                raise InvalidRequest(
                    "cursor is not one this server handed out", param="cursor"
                ) from None
            where += (
                " AND (t.created_at, t.id) < "
                "(SELECT created_at, id FROM tasks WHERE id = :cursor AND owner_id = :owner)"
            )
        query = (
            _SELECT_TASKS.format(where=where)
            + " ORDER BY t.created_at DESC, t.id DESC LIMIT :limit OFFSET :offset"
        )
        with self.sessions() as session:
            rows = [row._asdict() for row in session.execute(text(query), params)]
            more = len(rows) > limit
            records = [self.record(session, row) for row in rows[:limit]]
        return records, (str(records[-1].id) if more else None)

    def record(self, session: Session, row: dict[str, Any]) -> TaskRecord:
        """A task row (as ``_SELECT_TASKS`` reads it) as a record, with its queue position
        and ETA while unfinished."""
        eta = None
        if row["state"] == "queued" and "ahead" not in row:
            place = None
            if row["job_id"] is not None:
                place = (-row["priority"], row["fair_rank"], row["job_id"])
            row["ahead"], row["ahead_work"] = self.eta.ahead(session, row["queue"], place)
        if row["state"] in UNFINISHED:
            eta = self.eta.estimate(
                session,
                state=row["state"],
                kind=row["kind"],
                model=row["model"],
                work=row["work"],
                step=row["step"],
                total=row["total"],
                ahead_work=row.get("ahead_work") or 0.0,
                batch_work=row.get("batch_work"),
            )
        return TaskRecord(
            id=row["id"],
            owner_id=row["owner_id"],
            kind=row["kind"],
            origin=row["origin"],
            state=row["state"],
            model=row["model"],
            request=_REQUESTS[row["kind"]].model_validate(row["request"]),
            step=row["step"],
            total=row["total"],
            attempts=row["attempts"],
            error=row["error"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            queue_position=row.get("ahead") if row["state"] == "queued" else None,
            eta_seconds=eta,
            images=tuple(ImageRecord(**image) for image in row["images"] or ()),
            batch_size=row.get("batch_size") or 1,
            priority=row["priority"],
            preview=bytes(row["preview"]) if row.get("preview") is not None else None,
        )

    def fleet(self) -> dict[str, Any]:
        """Every worker and queue (see ``tasks.fleet``)."""
        with self.sessions() as session:
            return fleet_view(session, stalled_seconds=self.settings.stalled_seconds)

    def queue_summary(self) -> dict[str, int]:
        """Live workers and unfinished tasks, for health checks and dashboards."""
        with self.sessions() as session:
            counts = dict(
                session.execute(
                    select(Task.state, func.count())
                    .where(Task.state.in_(UNFINISHED))
                    .group_by(Task.state)
                ).all()
            )
            workers = self.eta.live_workers(session)
        return {
            "workers": workers,
            "queued": counts.get("queued", 0),
            "running": counts.get("running", 0),
        }
