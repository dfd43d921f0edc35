"""The task service: what every dialect calls to submit, read, list and cancel tasks, and to
upload images. Every query is scoped to the caller; someone else's task is simply not found."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import Task, TrainedModel, Upload
from huabu.engine import preprocessors
from huabu.engine.library import ModelLibrary, private_name
from huabu.errors import InvalidRequest, NotFound, Overloaded, TooLarge
from huabu.images import decode_image, repaint_mask
from huabu.native import MAX_LORAS, GenerationRequest, LoraRef
from huabu.settings import Settings
from huabu.storage import LocalStorage
from huabu.tasks import queue
from huabu.tasks.eta import EtaEstimator
from huabu.tasks.records import (
    UNFINISHED,
    ImageRecord,
    TaskRecord,
    TrainedRecord,
    UploadRecord,
)

#: How stale a cached unfinished task may be, and how many tasks the read cache holds.
CACHE_SECONDS = 1.0
CACHE_ENTRIES = 50_000
_IMAGE_FIELDS = (
    "index", "seed", "key", "preview_key", "format", "width", "height", "size_bytes", "infotext"
)  # fmt: skip
#: Tasks with their images and, for queued ones, the work ahead: one round trip per read.
_SELECT_TASKS = f"""
    SELECT t.id, t.owner_id, t.kind, t.origin, t.state, t.model, t.request, t.step, t.total,
           t.work, t.attempts, t.error, t.created_at, t.started_at, t.finished_at, t.queue,
           t.job_id,
           CASE WHEN t.state = 'succeeded' THEN
             (SELECT json_agg(json_build_object({", ".join(f"'{f}', i.{f}" for f in _IMAGE_FIELDS)})
                              ORDER BY i.index)
                FROM task_images i WHERE i.task_id = t.id)
           END AS images
      FROM tasks t
     WHERE {{where}}
"""
_GET = text(_SELECT_TASKS.format(where="t.id = :id AND t.owner_id = :owner"))
#: The caller's running task, else their oldest queued one.
_CURRENT = text(
    _SELECT_TASKS.format(where="t.owner_id = :owner AND t.state IN ('queued', 'running')")
    + " ORDER BY t.state = 'running' DESC, t.created_at LIMIT 1"
)
_LIMITS = text(
    """
    SELECT mine.count, mine.min, everyone.count, everyone.min, everyone.ahead, everyone.work
      FROM (SELECT count(*), min(work) FROM tasks
             WHERE owner_id = :owner AND state IN ('queued', 'running')) mine,
           (SELECT count(*), min(work),
                   count(*) FILTER (WHERE state = 'queued' AND queue = :queue) AS ahead,
                   coalesce(sum(work * (1 - step::float / greatest(total, 1)))
                            FILTER (WHERE queue = :queue), 0) AS work
              FROM tasks WHERE state IN ('queued', 'running')) everyone
    """
)
#: The task row and its procrastinate job, in one statement (see ``queue``).
_INSERT_AND_DEFER = text(
    f"""
    WITH job AS ({queue.DEFER_SQL})
    INSERT INTO tasks (id, owner_id, kind, origin, queue, state, model, request, step, total,
                       work, attempts, job_id, cancel_requested)
    SELECT :id, :owner, :kind, :origin, :queue, 'queued', :model, CAST(:request AS jsonb), 0,
           :total, :work, 0, job.id, false
      FROM job
    RETURNING created_at, job_id
    """
)
#: A trained model, usable once its training task has succeeded.
_TRAINED = (
    select(TrainedModel.base_model, TrainedModel.trigger_word)
    .join(Task, Task.id == TrainedModel.task_id)
    .where(
        TrainedModel.owner_id == bindparam("owner"),
        TrainedModel.name == bindparam("name"),
        Task.state == "succeeded",
    )
)
_KEPT_FORMATS = {
    "PNG": ("png", "image/png"),
    "JPEG": ("jpg", "image/jpeg"),
    "WEBP": ("webp", "image/webp"),
}


def work_units(request: GenerationRequest) -> float:
    """Relative cost of a generation: denoising steps × pixels × images."""
    steps = request.steps * (request.strength if request.is_img2img else 1.0)
    return max(1.0, steps) * request.width * request.height * request.n_images


def parse_id(value: str | uuid.UUID, what: str = "task") -> uuid.UUID:
    """A UUID, or NotFound: a malformed id is just an id that does not exist."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no {what} {value}") from None


class TaskService:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: LocalStorage,
        library: ModelLibrary | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        # Reads in autocommit: one round trip per query instead of BEGIN, query, ROLLBACK.
        self.reads = sessionmaker(
            sessions.kw["bind"].execution_options(isolation_level="AUTOCOMMIT"),
            expire_on_commit=False,
        )
        self.storage = storage
        self.library = library or ModelLibrary(settings)
        self.eta = EtaEstimator(settings)
        self._cache: OrderedDict[uuid.UUID, tuple[TaskRecord, float]] | None = None

    # -- submitting -------------------------------------------------------------------------

    def submit_generation(
        self, owner_id: uuid.UUID, request: GenerationRequest, *, origin: str
    ) -> TaskRecord:
        """Validate ``request`` completely, then queue it. Raises before anything is stored."""
        request = self._resolve_trained(owner_id, request.checked(self.settings))
        if request.vae:
            self.library.find("vae", request.vae, param="vae")
        for index, name in enumerate(request.embeddings):
            self.library.find("embeddings", name, param=f"embeddings.{index}")
        if request.init_image is not None:
            upload = self._upload_of(owner_id, request.init_image, param="init_image")
            request = request.model_copy(update={"init_image": upload.key})
        if request.inpaint is not None:
            inpaint = request.inpaint
            upload = self._upload_of(owner_id, inpaint.mask, param="inpaint.mask")
            mask = decode_image(
                self.storage.get(upload.key),
                field="inpaint.mask",
                max_pixels=self.settings.max_input_pixels,
            )
            repaint_mask(mask, invert=inpaint.invert, field="inpaint.mask")
            request = request.model_copy(
                update={"inpaint": inpaint.model_copy(update={"mask": upload.key})}
            )
        units = []
        for index, unit in enumerate(request.controlnets):
            self.library.find("controlnet", unit.model, param=f"controlnets.{index}.model")
            preprocessors.check(unit.preprocessor, param=f"controlnets.{index}.preprocessor")
            upload = self._upload_of(owner_id, unit.image, param=f"controlnets.{index}.image")
            units.append(unit.model_copy(update={"image": upload.key}))
        if units:
            request = request.model_copy(update={"controlnets": tuple(units)})
        if request.ip_adapter is not None:
            adapter = request.ip_adapter
            self.library.find("ipadapter", adapter.name, param="ip_adapter.name")
            upload = self._upload_of(owner_id, adapter.image, param="ip_adapter.image")
            request = request.model_copy(
                update={"ip_adapter": adapter.model_copy(update={"image": upload.key})}
            )
        return self.enqueue(
            owner_id,
            kind="generate",
            origin=origin,
            model=request.model,
            request=request.model_dump(mode="json"),
            total=request.steps,
            work=work_units(request),
        )

    def _resolve_trained(
        self, owner_id: uuid.UUID, request: GenerationRequest
    ) -> GenerationRequest:
        """Checks the model and LoRA names, resolving the caller's trained models: as the
        model, its base with its LoRA and trigger word; as a LoRA, its private library name.
        Public names win. A private name written out (``@…/…``) is refused like any unknown
        name: it is the service's to hand out, never the caller's to choose."""
        public_loras = set(self.library.names("loras"))
        loras = list(request.loras)
        for index, lora in enumerate(loras):
            if lora.name not in public_loras:
                trained = self.trained_model(owner_id, lora.name)
                if trained is None:
                    raise self.library.unknown("loras", lora.name, param=f"loras.{index}.name")
                loras[index] = lora.model_copy(update={"name": trained.lora})
        update: dict[str, Any] = {"loras": tuple(loras)}
        if request.model not in self.library.names("checkpoints"):
            trained = self.trained_model(owner_id, request.model)
            if trained is None:
                raise self.library.unknown("checkpoints", request.model, param="model")
            if len(loras) >= MAX_LORAS:
                raise InvalidRequest(
                    f"loras: the trained model {request.model!r} takes one of the "
                    f"{MAX_LORAS} LoRA slots; pass at most {MAX_LORAS - 1} more",
                    param="loras",
                )
            prompt = ", ".join(p for p in (trained.trigger_word, request.prompt) if p.strip())
            update |= {
                "model": trained.base_model,
                "prompt": prompt,
                "loras": (LoraRef(name=trained.lora), *loras),
            }
        return request.model_copy(update=update)

    def trained_model(self, owner_id: uuid.UUID, name: str) -> TrainedRecord | None:
        """The caller's trained model ``name``, once its training has succeeded."""
        if name.startswith("@"):
            return None
        with self.reads() as session:
            row = session.execute(_TRAINED, {"owner": owner_id, "name": name}).one_or_none()
        if row is None:
            return None
        return TrainedRecord(name, row.base_model, row.trigger_word, private_name(owner_id, name))

    def default_model(self) -> str:
        """The checkpoint used when a request names none (HUABU_DEFAULT_MODEL, else the first)."""
        if self.settings.default_model:
            return self.settings.default_model
        names = self.library.names("checkpoints")
        if not names:
            raise InvalidRequest("the server has no checkpoint to generate with", param="model")
        return names[0]

    def enqueue(
        self,
        owner_id: uuid.UUID,
        *,
        kind: str,
        origin: str,
        model: str,
        request: dict[str, Any],
        total: int,
        work: float,
        also: Callable[[Session, uuid.UUID], None] | None = None,
    ) -> TaskRecord:
        """Insert a task of ``kind`` and its job, after the queue limits; ``also(session,
        task_id)`` writes rows that belong with it, in the same transaction (a database error
        there queues nothing)."""
        task_id, queue_name = uuid.uuid4(), queue.QUEUES[kind]
        with self.sessions.begin() as session:
            ahead, ahead_work = self._check_limits(session, owner_id, queue_name)
            created_at, _ = session.execute(
                _INSERT_AND_DEFER,
                {
                    "id": task_id,
                    "owner": owner_id,
                    "kind": kind,
                    "origin": origin,
                    "queue": queue_name,
                    "model": model,
                    "request": json.dumps(request),
                    "total": total,
                    "work": work,
                    "task_name": queue.TASK_NAMES[kind],
                    "args": json.dumps({"task_id": str(task_id)}),
                },
            ).one()
            if also is not None:
                also(session, task_id)
                session.flush()
            row = dict(
                id=task_id, owner_id=owner_id, kind=kind, origin=origin, state="queued",
                model=model, request=request, step=0, total=total, work=work, attempts=0,
                error=None, created_at=created_at, started_at=None, finished_at=None,
                ahead=ahead, ahead_work=ahead_work, images=None,
            )  # fmt: skip
            return self._record(session, row)

    def _check_limits(
        self, session: Session, owner_id: uuid.UUID, queue_name: str
    ) -> tuple[int, float]:
        """Refuse with Overloaded past a queue limit; else (tasks, work) ahead of a new task.

        Deliberately lock-free: submits racing at the very same moment can each pass the
        check, so a limit can be exceeded by the number of submits in flight at once. Exact
        enforcement would serialise all of a user's submits."""
        mine, my_smallest, everyone, smallest, ahead, ahead_work = session.execute(
            _LIMITS, {"owner": owner_id, "queue": queue_name}
        ).one()
        if mine >= self.settings.max_queued_per_user:
            raise Overloaded(
                f"you have {mine} unfinished tasks, the limit is "
                f"{self.settings.max_queued_per_user}; wait for some to finish",
                retry_after=self._retry_after(session, my_smallest),
            )
        if everyone >= self.settings.max_queued:
            raise Overloaded(
                f"the server has {everyone} unfinished tasks, its limit; try again shortly",
                retry_after=self._retry_after(session, smallest),
            )
        return ahead, ahead_work  # a new task is behind every queued one

    def _retry_after(self, session: Session, work: float | None) -> int:
        """Roughly when one slot frees up: the smallest queued task's run time."""
        seconds = (work or 0) * self.eta.speed(session, None)
        return min(60, max(1, math.ceil(seconds)))

    # -- reading ----------------------------------------------------------------------------

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
            record, fetched = self._cache[uuid.UUID(task_id)]
        except (ValueError, KeyError):
            return None
        if record.owner_id != owner_id:
            return None
        if not record.finished and time.monotonic() - fetched > CACHE_SECONDS:
            return None
        return record

    def get(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> TaskRecord:
        task_id = parse_id(task_id)
        cached = self.peek(owner_id, str(task_id))
        if cached is not None:
            return cached
        with self.reads() as session:
            row = session.execute(_GET, {"id": task_id, "owner": owner_id}).one_or_none()
            if row is None:
                raise NotFound(f"no task {task_id}")
            record = self._record(session, row._asdict())
        if self._cache is not None:
            self._cache[record.id] = (record, time.monotonic())
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return record

    def current(self, owner_id: uuid.UUID) -> TaskRecord | None:
        """The caller's running task, else their oldest queued one, else None."""
        with self.reads() as session:
            row = session.execute(_CURRENT, {"owner": owner_id}).one_or_none()
            return None if row is None else self._record(session, row._asdict())

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
        with self.reads() as session:
            rows = [row._asdict() for row in session.execute(text(query), params)]
            more = len(rows) > limit
            records = [self._record(session, row) for row in rows[:limit]]
        return records, (str(records[-1].id) if more else None)

    def _record(self, session: Session, row: dict[str, Any]) -> TaskRecord:
        eta = None
        if row["state"] == "queued" and "ahead" not in row:
            row["ahead"], row["ahead_work"] = self.eta.ahead(session, row["queue"], row["job_id"])
        if row["state"] in UNFINISHED:
            eta = self.eta.estimate(
                session,
                state=row["state"],
                model=row["model"],
                work=row["work"],
                step=row["step"],
                total=row["total"],
                ahead_work=row.get("ahead_work") or 0.0,
            )
        return TaskRecord(
            id=row["id"],
            owner_id=row["owner_id"],
            kind=row["kind"],
            origin=row["origin"],
            state=row["state"],
            model=row["model"],
            request=row["request"],
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
        )

    def queue_summary(self) -> dict[str, int]:
        """Live workers and unfinished tasks, for health checks and dashboards."""
        with self.reads() as session:
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

    # -- cancelling -------------------------------------------------------------------------

    def cancel(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> TaskRecord:
        """Queued: cancelled now. Running: its worker stops at the next step. Finished: as is."""
        task_id = parse_id(task_id)
        with self.sessions.begin() as session:
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
        self.forget(str(task_id))
        return self.get(owner_id, task_id)

    # -- uploads ----------------------------------------------------------------------------

    def upload(self, owner_id: uuid.UUID, data: bytes, *, field: str = "file") -> UploadRecord:
        """Store an image the caller sends, after checking it is one (and not a bomb)."""
        return self.upload_many(owner_id, [data], field=field)[0]

    def upload_many(
        self, owner_id: uuid.UUID, files: list[bytes], *, field: str = "file"
    ) -> list[UploadRecord]:
        """Store several images, all or none: every one is checked before any is stored.
        Errors name the file as ``field.<index>`` when there are several."""
        checked = [
            self._checked_image(data, field if len(files) == 1 else f"{field}.{index}")
            for index, data in enumerate(files)
        ]
        records, rows = [], []
        for data, extension, content_type, width, height in checked:
            upload_id = uuid.uuid4()
            key = f"uploads/{upload_id}.{extension}"
            self.storage.put(key, data)
            records.append(UploadRecord(upload_id, key, content_type, width, height, len(data)))
            rows.append(
                Upload(
                    id=upload_id,
                    owner_id=owner_id,
                    key=key,
                    content_type=content_type,
                    width=width,
                    height=height,
                    size_bytes=len(data),
                )
            )
        with self.sessions.begin() as session:
            session.add_all(rows)
        return records

    def _checked_image(self, data: bytes, field: str) -> tuple[bytes, str, str, int, int]:
        """(bytes to store, extension, content type, width, height), or InvalidRequest."""
        limit = self.settings.max_image_bytes
        if len(data) > limit:
            raise TooLarge(
                f"{field}: the image is {len(data) / 2**20:.1f} MiB, the limit is "
                f"{limit / 2**20:.0f} MiB",
                param=field,
            )
        image = decode_image(data, field=field, max_pixels=self.settings.max_input_pixels)
        source_format = Image.open(io.BytesIO(data)).format or ""
        if source_format in _KEPT_FORMATS:
            extension, content_type = _KEPT_FORMATS[source_format]
        else:  # BMP, GIF, TIFF: stored as PNG, which every client can display
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data, extension, content_type = buffer.getvalue(), "png", "image/png"
        return data, extension, content_type, image.width, image.height

    def upload_with_key(self, owner_id: uuid.UUID, key: str) -> UploadRecord | None:
        """The caller's upload stored at ``key``, if it is one (``uploads/<id>.<ext>``)."""
        stem = key.removeprefix("uploads/").partition(".")[0]
        try:
            upload_id = uuid.UUID(stem)
        except ValueError:
            return None
        with self.reads() as session:
            row = session.scalar(
                select(Upload).where(
                    Upload.id == upload_id, Upload.owner_id == owner_id, Upload.key == key
                )
            )
        if row is None:
            return None
        return UploadRecord(
            row.id, row.key, row.content_type, row.width, row.height, row.size_bytes
        )

    def _upload_of(self, owner_id: uuid.UUID, upload_id: str, *, param: str) -> Upload:
        try:
            wanted = uuid.UUID(upload_id)
        except ValueError:
            raise InvalidRequest(
                f"{param}: {upload_id!r} is not an upload id", param=param
            ) from None
        with self.sessions() as session:
            row = session.scalar(
                select(Upload).where(Upload.id == wanted, Upload.owner_id == owner_id)
            )
        if row is None:
            raise InvalidRequest(f"{param}: no upload {upload_id}", param=param)
        return row
