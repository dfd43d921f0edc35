"""The task service: what every dialect calls to submit, read, list and cancel tasks, and to
upload images. Every query is scoped to the caller; someone else's task is simply not found."""

from __future__ import annotations

import io
import math
import uuid
from collections import defaultdict
from datetime import UTC, datetime

from PIL import Image
from sqlalchemy import func, select, text, tuple_
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import Task, TaskImage, Upload
from huabu.engine.library import ModelLibrary
from huabu.errors import InvalidRequest, NotFound, Overloaded
from huabu.images import decode_image
from huabu.native import GenerationRequest
from huabu.settings import Settings
from huabu.storage import LocalStorage
from huabu.tasks import queue
from huabu.tasks.eta import EtaEstimator
from huabu.tasks.records import UNFINISHED, ImageRecord, TaskRecord, UploadRecord

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
        self.storage = storage
        self.library = library or ModelLibrary(settings)
        self.eta = EtaEstimator(settings)

    # -- submitting -------------------------------------------------------------------------

    def submit_generation(
        self, owner_id: uuid.UUID, request: GenerationRequest, *, origin: str
    ) -> TaskRecord:
        """Validate ``request`` completely, then queue it. Raises before anything is stored."""
        request = request.checked(self.settings)
        self.library.find("checkpoints", request.model, param="model")
        if request.vae:
            self.library.find("vae", request.vae, param="vae")
        if request.init_image is not None:
            upload = self._upload_of(owner_id, request.init_image, param="init_image")
            request = request.model_copy(update={"init_image": upload.key})
        task = Task(
            id=uuid.uuid4(),
            owner_id=owner_id,
            kind="generate",
            origin=origin,
            queue=queue.QUEUES["generate"],
            state="queued",
            model=request.model,
            request=request.model_dump(mode="json"),
            step=0,
            total=request.steps,
            work=work_units(request),
            attempts=0,
            cancel_requested=False,
        )
        return self._enqueue(task)

    def _enqueue(self, task: Task) -> TaskRecord:
        with self.sessions.begin() as session:
            # One submit at a time per user, so two racing submits cannot both pass the limit.
            session.execute(
                text("SELECT pg_advisory_xact_lock(hashtextextended(:owner, 0))"),
                {"owner": str(task.owner_id)},
            )
            self._check_limits(session, task.owner_id)
            session.add(task)
            session.flush()
            task.job_id = queue.defer(session, task.kind, str(task.id))
            session.flush()
            return self._record(session, task, [])

    def _check_limits(self, session: Session, owner_id: uuid.UUID) -> None:
        live = Task.state.in_(UNFINISHED)
        mine, smallest = session.execute(
            select(func.count(), func.min(Task.work)).where(Task.owner_id == owner_id, live)
        ).one()
        if mine >= self.settings.max_queued_per_user:
            raise Overloaded(
                f"you have {mine} unfinished tasks, the limit is "
                f"{self.settings.max_queued_per_user}; wait for some to finish",
                retry_after=self._retry_after(session, smallest),
            )
        everyone, smallest = session.execute(
            select(func.count(), func.min(Task.work)).where(live)
        ).one()
        if everyone >= self.settings.max_queued:
            raise Overloaded(
                f"the server has {everyone} unfinished tasks, its limit; try again shortly",
                retry_after=self._retry_after(session, smallest),
            )

    def _retry_after(self, session: Session, work: float | None) -> int:
        """Roughly when one slot frees up: the smallest queued task's run time."""
        seconds = (work or 0) * self.eta.speed(session, None)
        return min(60, max(1, math.ceil(seconds)))

    # -- reading ----------------------------------------------------------------------------

    def get(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> TaskRecord:
        task_id = parse_id(task_id)
        with self.sessions() as session:
            task = session.scalar(select(Task).where(Task.id == task_id, Task.owner_id == owner_id))
            if task is None:
                raise NotFound(f"no task {task_id}")
            return self._record(session, task, self._images(session, [task]).get(task.id, []))

    def list(
        self, owner_id: uuid.UUID, *, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[TaskRecord], str | None]:
        """The caller's tasks, newest first, ``limit`` per page; the cursor continues a list."""
        if not 1 <= limit <= 100:
            raise InvalidRequest(f"limit must be between 1 and 100, got {limit}", param="limit")
        query = select(Task).where(Task.owner_id == owner_id)
        if cursor:
            try:
                after = uuid.UUID(cursor)
            except ValueError:
                raise InvalidRequest(
                    "cursor is not one this server handed out", param="cursor"
                ) from None
            mark = (
                select(Task.created_at, Task.id)
                .where(Task.id == after, Task.owner_id == owner_id)
                .subquery()
            )
            query = query.where(
                tuple_(Task.created_at, Task.id)
                < select(mark.c.created_at, mark.c.id).scalar_subquery()
            )
        query = query.order_by(Task.created_at.desc(), Task.id.desc()).limit(limit + 1)
        with self.sessions() as session:
            tasks = list(session.scalars(query))
            more = len(tasks) > limit
            tasks = tasks[:limit]
            images = self._images(session, tasks)
            records = [self._record(session, task, images.get(task.id, [])) for task in tasks]
        return records, (str(tasks[-1].id) if more else None)

    def _images(self, session: Session, tasks: list[Task]) -> dict[uuid.UUID, list[TaskImage]]:
        done = [task.id for task in tasks if task.state == "succeeded"]
        found: dict[uuid.UUID, list[TaskImage]] = defaultdict(list)
        if done:
            rows = session.scalars(
                select(TaskImage).where(TaskImage.task_id.in_(done)).order_by(TaskImage.index)
            )
            for row in rows:
                found[row.task_id].append(row)
        return found

    def _record(self, session: Session, task: Task, images: list[TaskImage]) -> TaskRecord:
        position = eta = None
        if task.state in UNFINISHED:
            position, eta = self.eta.estimate(
                session,
                task_id=task.id,
                queue=task.queue,
                job_id=task.job_id,
                state=task.state,
                model=task.model,
                work=task.work,
                step=task.step,
                total=task.total,
            )
        return TaskRecord(
            id=task.id,
            owner_id=task.owner_id,
            kind=task.kind,
            origin=task.origin,
            state=task.state,  # type: ignore[arg-type]
            model=task.model,
            request=task.request,
            step=task.step,
            total=task.total,
            attempts=task.attempts,
            error=task.error,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            queue_position=position,
            eta_seconds=eta,
            images=tuple(
                ImageRecord(
                    index=image.index,
                    seed=image.seed,
                    key=image.key,
                    preview_key=image.preview_key,
                    format=image.format,
                    width=image.width,
                    height=image.height,
                    size_bytes=image.size_bytes,
                    infotext=image.infotext,
                )
                for image in images
            ),
        )

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
            session.flush()
            return self._record(session, task, [])

    # -- uploads ----------------------------------------------------------------------------

    def upload(self, owner_id: uuid.UUID, data: bytes, *, field: str = "file") -> UploadRecord:
        """Store an image the caller sends, after checking it is one (and not a bomb)."""
        image = decode_image(data, field=field, max_pixels=self.settings.max_input_pixels)
        source_format = Image.open(io.BytesIO(data)).format or ""
        if source_format in _KEPT_FORMATS:
            extension, content_type = _KEPT_FORMATS[source_format]
        else:  # BMP, GIF, TIFF: stored as PNG, which every client can display
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data, extension, content_type = buffer.getvalue(), "png", "image/png"
        upload_id = uuid.uuid4()
        key = f"uploads/{upload_id}.{extension}"
        self.storage.put(key, data)
        row = Upload(
            id=upload_id,
            owner_id=owner_id,
            key=key,
            content_type=content_type,
            width=image.width,
            height=image.height,
            size_bytes=len(data),
        )
        with self.sessions.begin() as session:
            session.add(row)
        return UploadRecord(upload_id, key, content_type, image.width, image.height, len(data))

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
