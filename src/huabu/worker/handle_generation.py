"""The handler for generation tasks: decode the stored inputs, generate, store the images and
their previews. Image keys come from the task id and index, so a re-run overwrites its own."""

from __future__ import annotations

import io
import logging
import uuid
from functools import partial
from typing import Any

from PIL import Image
from sqlalchemy import delete
from sqlalchemy.orm import Session

from huabu.catalog.infotext import encode_image
from huabu.db.tables import TaskImage
from huabu.engine.engine import Engine
from huabu.errors import Cancelled, first_line
from huabu.native import GenerationRequest, GenerationResult
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.worker.inputs import input_images
from huabu.worker.runner import BatchItem, Outcome, Progress, outcome_of

log = logging.getLogger("huabu.worker")

PREVIEW_SIZE = 256
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class GenerationHandler:
    def __init__(self, settings: Settings, storage: Storage, engine: Engine) -> None:
        self.settings = settings
        self.storage = storage
        self.engine = engine

    def __call__(self, task_id: uuid.UUID, data: dict[str, Any], progress: Progress) -> Outcome:
        request = GenerationRequest.model_validate(data)
        result = self.engine.generate(
            request,
            **input_images(request, self.storage.get, self.settings.max_input_pixels),
            on_progress=progress,
            should_cancel=progress.should_cancel,
        )
        return self._store(task_id, request, result)

    def batch(self, items: list[BatchItem]) -> list[Outcome | Exception]:
        """Tasks of one batch key in one denoising loop (``Engine.generate_batch``). A task
        cancelled meanwhile has its images dropped; if the loop fails, each task runs again
        alone, so a failure stays with the task that causes it."""
        requests = [GenerationRequest.model_validate(data) for _, data, _ in items]
        progress = [mine for _, _, mine in items]
        try:
            sources = [
                input_images(request, self.storage.get, self.settings.max_input_pixels)[
                    "init_image"
                ]
                for request in requests
            ]
            results = self.engine.generate_batch(
                requests, list(progress), [mine.should_cancel for mine in progress], sources
            )
        except Cancelled:
            raise
        except Exception as exc:
            log.warning(
                "a batch of %d tasks failed (%s); each runs again alone",
                len(items),
                first_line(exc),
            )
            return [outcome_of(partial(self, *item)) for item in items]
        return [
            Cancelled() if mine.dropped() else outcome_of(partial(self._store, task, req, res))
            for (task, _, mine), req, res in zip(items, requests, results, strict=True)
        ]

    def _store(
        self, task_id: uuid.UUID, request: GenerationRequest, result: GenerationResult
    ) -> Outcome:
        extension = _EXTENSIONS[request.output_format]
        rows = []
        for index, (image, seed, info) in enumerate(
            zip(result.images, result.seeds, result.infotexts, strict=True)
        ):
            data = encode_image(image, request.output_format, info, request.output_quality)
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

        def store(session: Session) -> None:
            session.execute(delete(TaskImage).where(TaskImage.task_id == task_id))
            session.add_all(rows)

        return Outcome(
            {
                "seeds": result.seeds,
                "timings": {
                    "load": timings.load,
                    "prompt": timings.prompt,
                    "sample": timings.sample,
                    "decode": timings.decode,
                    "total": timings.total,
                },
            },
            store,
        )


def _preview(image: Image.Image) -> bytes:
    """A JPEG at most PREVIEW_SIZE on its longer side, for lists and galleries."""
    preview = image.copy()
    preview.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
