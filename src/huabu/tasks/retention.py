"""Deleting what is no longer wanted, so the disk does not fill:

- **A user deletes a task** (``delete_task``): a queued one is cancelled, a running one asked
  to stop; its images and previews are removed from storage at once (a running task's, as soon
  as it ends: the housekeeping below runs each minute), and it reads as gone (404) from then
  on. Its row stays hidden for two days, a tombstone that keeps counting toward the day's
  quota and keeps its Idempotency-Key answered, then goes.
- **HUABU_RETENTION_DAYS** (0: keep forever): generation tasks finished longer ago are
  deleted with their files. Training tasks stay: their rows are their trained models'.
- **Uploads nothing used**: an upload older than a day that no task's request and no dataset
  names is deleted with its file.

Rows go before files (in one transaction per batch, their counts added to the metric
baselines first, ``tasks.metrics``), so no task ever shows an image that is gone; a crash
between the two leaves files without rows, never the reverse. The housekeeping is a
procrastinate periodic job of the service jobs (``tasks.service_jobs``), deferred once a
minute for the whole fleet however many servers run.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.errors import NotFound, StorageFull
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.tasks import metrics, queue
from huabu.tasks.reads import parse_id

log = logging.getLogger("huabu.retention")

BATCH = 500
TOMBSTONE_DAYS = 2
UNUSED_UPLOAD_DAYS = 1

_LOCK_TASK = text(
    "SELECT state, job_id FROM tasks WHERE id = :id AND owner_id = :owner "
    "AND deleted_at IS NULL FOR UPDATE"
)
_MARK = text(
    """
    UPDATE tasks SET deleted_at = now(),
           state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
           error = CASE WHEN state = 'queued' THEN 'deleted before it started' ELSE error END,
           finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END,
           cancel_requested = cancel_requested OR state = 'running'
     WHERE id = :id
    """
)
#: The files of deleted tasks that have ended, and their image rows with them.
_DROP_IMAGES = text(
    """
    DELETE FROM task_images WHERE task_id IN (
      SELECT id FROM tasks WHERE deleted_at IS NOT NULL
         AND state IN ('succeeded', 'failed', 'cancelled') AND (CAST(:id AS uuid) IS NULL
                                                               OR id = CAST(:id AS uuid))
       LIMIT :batch)
    RETURNING key, preview_key
    """
)
_DUE = {
    "tombstones": "deleted_at < now() - make_interval(days => :tombstone_days)",
    "expired": "kind = 'generate' AND state IN ('succeeded', 'failed', 'cancelled') "
    "AND finished_at < now() - make_interval(days => :retention_days)",
}
_UNUSED_UPLOADS = text(
    """
    DELETE FROM uploads u WHERE u.id IN (
      SELECT u2.id FROM uploads u2
       WHERE u2.created_at < now() - make_interval(days => :days)
         AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.owner_id = u2.owner_id
                            AND strpos(t.request::text, u2.key) > 0)
         AND NOT EXISTS (SELECT 1 FROM datasets d WHERE d.owner_id = u2.owner_id
                            AND d.images ? u2.key)
       LIMIT :batch)
    RETURNING u.key
    """
)


def delete_task(
    sessions: sessionmaker[Session], storage: Storage, owner_id: uuid.UUID, task_id: str | uuid.UUID
) -> uuid.UUID:
    """The owner deletes a task: cancelled first if unfinished, files removed, gone (404)."""
    task_id = parse_id(task_id)
    with sessions.begin() as session:
        row = session.execute(_LOCK_TASK, {"id": task_id, "owner": owner_id}).one_or_none()
        if row is None:
            raise NotFound(f"no task {task_id}")
        if row.state == "queued" and row.job_id is not None:
            queue.cancel_job(session, row.job_id)
        session.execute(_MARK, {"id": task_id})
        queue.announce(session, task_id)
    _drop_images(sessions, storage, task_id)
    return task_id


def housekeeping(settings: Settings, sessions: sessionmaker[Session], storage: Storage) -> None:
    """One round: deleted tasks' files, old tombstones, expired tasks, unused uploads."""
    began = time.monotonic()
    files = _drop_images(sessions, storage, None)
    rows = _purge(sessions, storage, "tombstones", {"tombstone_days": TOMBSTONE_DAYS})
    if settings.retention_days:
        rows += _purge(sessions, storage, "expired", {"retention_days": settings.retention_days})
    uploads = 0
    while True:
        with sessions.begin() as session:
            keys = list(
                session.execute(
                    _UNUSED_UPLOADS, {"days": UNUSED_UPLOAD_DAYS, "batch": BATCH}
                ).scalars()
            )
        _remove(storage, keys)
        uploads += len(keys)
        if len(keys) < BATCH:
            break
    if files or rows or uploads:
        log.info(
            "housekeeping: %d files of deleted tasks, %d task rows, %d unused uploads "
            "removed in %.1f s",
            files,
            rows,
            uploads,
            time.monotonic() - began,
        )


def _drop_images(
    sessions: sessionmaker[Session], storage: Storage, task_id: uuid.UUID | None
) -> int:
    removed = 0
    while True:
        with sessions.begin() as session:
            rows = session.execute(_DROP_IMAGES, {"id": task_id, "batch": BATCH}).all()
        _remove(storage, [key for row in rows for key in row])
        removed += len(rows)
        if len(rows) < BATCH or task_id is not None:
            return removed


def _purge(sessions: sessionmaker[Session], storage: Storage, which: str, params: dict) -> int:
    """Delete the task rows ``which`` selects, in batches: their counts kept, then the rows
    (their images' rows, runs, deliveries and idempotency keys with them), then the files."""
    removed = 0
    while True:
        with sessions.begin() as session:
            ids = (
                session.execute(
                    text(
                        f"SELECT id FROM tasks WHERE {_DUE[which]} LIMIT :batch "
                        "FOR UPDATE SKIP LOCKED"
                    ),
                    params | {"batch": BATCH},
                )
                .scalars()
                .all()
            )
            if not ids:
                return removed
            scope = {"ids": list(ids)}
            keys = session.execute(
                text("SELECT key, preview_key FROM task_images WHERE task_id = ANY(:ids)"),
                scope,
            ).all()
            metrics.retire(session, "id = ANY(:ids)", scope)
            session.execute(text("DELETE FROM tasks WHERE id = ANY(:ids)"), scope)
        _remove(storage, [key for row in keys for key in row])
        removed += len(ids)
        if len(ids) < BATCH:
            return removed


def _remove(storage: Storage, keys: list[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception as exc:  # noqa: BLE001 - a file left behind is logged, not fatal
            log.warning("could not delete %s from storage: %s", key, exc)


class FreeSpace:
    """HUABU_MIN_FREE_BYTES: new work is refused while the local storage has less free (S3
    has no such limit). Checked at most once a second."""

    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.minimum = settings.min_free_bytes
        self.root = getattr(storage, "root", None)
        self._checked: tuple[float, int] | None = None

    def check(self) -> None:
        if not self.minimum or self.root is None:
            return
        now = time.monotonic()
        if self._checked is None or now - self._checked[0] > 1.0:
            self.root.mkdir(parents=True, exist_ok=True)
            self._checked = (now, shutil.disk_usage(self.root).free)
        free = self._checked[1]
        if free < self.minimum:
            raise StorageFull(
                f"the server's storage is nearly full ({free // 2**20} MiB free, "
                f"{self.minimum // 2**20} MiB kept free); nothing was queued, try again later"
            )
