"""Running one generation task on a worker: claim the row, generate, store, finish.

Idempotent by construction: image keys come from the task id and index, so a task re-run
after its worker died overwrites its own files and rows, never duplicates them.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from typing import Any

from PIL import Image
from sqlalchemy import delete, text
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.tables import TaskImage
from huabu.engine.engine import Engine
from huabu.engine.metadata import encode_image
from huabu.errors import Cancelled, HuabuError
from huabu.images import decode_image
from huabu.native import GenerationRequest, GenerationResult
from huabu.settings import Settings
from huabu.storage import LocalStorage
from huabu.tasks import queue

log = logging.getLogger("huabu.worker")

PREVIEW_SIZE = 256
#: How often a running task writes its progress and looks for a cancel request.
PROGRESS_INTERVAL = 0.25
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

_CLAIM = text(
    """
    UPDATE tasks SET state = 'running', attempts = attempts + 1, started_at = now(), step = 0
     WHERE id = :id AND state IN ('queued', 'running')
    RETURNING request, attempts, cancel_requested
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


class _Progress:
    """The engine's step callback: throttled row updates, and the cancel flag they return."""

    def __init__(self, runner: GenerationRunner, task_id: uuid.UUID, stopping: threading.Event):
        self.runner, self.task_id, self.stopping = runner, task_id, stopping
        self.cancel_requested = False
        self.last = 0.0

    def __call__(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            with self.runner.sessions.begin() as session:
                session.execute(_NOT_DURABLE)
                self.cancel_requested = bool(
                    session.execute(
                        _PROGRESS, {"step": step, "total": total, "id": self.task_id}
                    ).scalar()
                )
                queue.announce(session, self.task_id)

    def should_cancel(self) -> bool:
        return self.cancel_requested or self.stopping.is_set()


class GenerationRunner:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: LocalStorage,
        engine: Engine,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.engine = engine

    def run(self, task_id: uuid.UUID, stopping: threading.Event) -> None:
        """Run task ``task_id`` to a final state. Raises only WorkerStopping."""
        with self.sessions.begin() as session:
            session.execute(_NOT_DURABLE)
            claimed = session.execute(_CLAIM, {"id": task_id}).one_or_none()
            if claimed is not None:
                queue.announce(session, task_id)
        if claimed is None:
            return  # cancelled while queued, or already finished by an earlier run
        request_data, attempts, cancel_requested = claimed
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
        progress = _Progress(self, task_id, stopping)
        try:
            request = GenerationRequest.model_validate(request_data)
            init = None
            if request.init_image is not None:
                init = self._image(request.init_image, "init_image")
            controls = [
                self._image(unit.image, f"controlnets.{index}.image")
                for index, unit in enumerate(request.controlnets)
            ]
            ip_image = None
            if request.ip_adapter is not None:
                ip_image = self._image(request.ip_adapter.image, "ip_adapter.image")
            result = self.engine.generate(
                request,
                init_image=init,
                control_images=controls,
                ip_image=ip_image,
                on_progress=progress,
                should_cancel=progress.should_cancel,
            )
            self._store(task_id, request, result)
        except Cancelled:
            if stopping.is_set() and not progress.cancel_requested:
                self.requeue(task_id, forgive=True)
                log.info("task %s: worker stopping; handed back to the queue", task_id)
                raise WorkerStopping() from None
            self._finish(task_id, "cancelled", error="cancelled while running")
        except HuabuError as exc:
            self._finish(task_id, "failed", error=exc.message)
        except Exception as exc:
            log.exception("task %s failed", task_id)
            self._finish(
                task_id,
                "failed",
                error=f"internal error while generating ({type(exc).__name__}); "
                "the server log has the details",
            )

    def _image(self, key: str, field: str) -> Image.Image:
        """An input image the service stored at submit, decoded under the same limits."""
        return decode_image(
            self.storage.get(key), field=field, max_pixels=self.settings.max_input_pixels
        )

    def _store(
        self, task_id: uuid.UUID, request: GenerationRequest, result: GenerationResult
    ) -> None:
        extension = _EXTENSIONS[request.output_format]
        rows = []
        for index, (image, seed, info) in enumerate(
            zip(result.images, result.seeds, result.infotexts, strict=True)
        ):
            data = encode_image(image, request.output_format, info)
            key = f"images/{task_id}/{index}.{extension}"
            preview_key = f"previews/{task_id}/{index}.jpg"
            self.storage.put(key, data)
            self.storage.put(preview_key, _preview(image))
            rows.append(
                TaskImage(
                    task_id=task_id,
                    index=index,
                    seed=seed,
                    key=key,
                    preview_key=preview_key,
                    format=request.output_format,
                    width=image.width,
                    height=image.height,
                    size_bytes=len(data),
                    infotext=info,
                )
            )
        timings = result.timings
        summary: dict[str, Any] = {
            "seeds": result.seeds,
            "timings": {
                "load": timings.load,
                "prompt": timings.prompt,
                "sample": timings.sample,
                "decode": timings.decode,
                "total": timings.total,
            },
        }
        with self.sessions.begin() as session:
            session.execute(delete(TaskImage).where(TaskImage.task_id == task_id))
            session.add_all(rows)
            session.flush()
            self._finish_in(session, task_id, "succeeded", result=summary)

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


def _preview(image: Image.Image) -> bytes:
    """A JPEG at most PREVIEW_SIZE on its longer side, for lists and galleries."""
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
