"""Submitting tasks: check everything first, then store and queue in one unit.

``submit_generation`` checks the request against the server's limits and the catalog, resolves
the caller's trained models and input images, and checks the queue limits. Only then does it
store the images that came with the request and insert their upload rows, the task and its
procrastinate job, in one transaction; if that fails, the stored files are removed. A refused
request leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.orm import Session, sessionmaker

from huabu import fetch
from huabu.auth import Principal
from huabu.catalog.families import check_lora, fit
from huabu.catalog.library import check_families, check_upscaler, private_name
from huabu.catalog.preprocessors import check as check_preprocessor
from huabu.catalog.preprocessors import held_annotators
from huabu.catalog.shared import Catalog
from huabu.catalog.styles import apply_styles
from huabu.db.tables import Task, TrainedModel
from huabu.errors import InvalidRequest, Overloaded
from huabu.images import decode_image, repaint_mask
from huabu.native import MAX_LORAS, GenerationRequest, ImageRef, LoraRef
from huabu.native.generation import hires_steps
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.tasks import fairness, idempotency, queue, quotas, webhooks
from huabu.tasks.reads import TaskReads
from huabu.tasks.records import TaskRecord, TrainedRecord
from huabu.tasks.retention import FreeSpace
from huabu.tasks.uploads import CheckedImage, NewUploads, Uploads, storing

_LIMITS = text(
    """
    SELECT mine.count, mine.min, everyone.count, everyone.min, everyone.ahead, everyone.work
      FROM (SELECT count(*), min(work) FROM tasks
             WHERE owner_id = :owner AND state IN ('queued', 'running')) mine,
           (SELECT count(*), min(work),
                   count(*) FILTER (WHERE state = 'queued' AND queue = :queue
                                      AND (priority, -fair_rank) >= (:priority, -:rank)) AS ahead,
                   coalesce(sum(work * (1 - step::float / greatest(total, 1)))
                            FILTER (WHERE queue = :queue
                                      AND (state = 'running'
                                           OR (priority, -fair_rank) >= (:priority, -:rank))),
                            0) AS work
              FROM tasks WHERE state IN ('queued', 'running')) everyone
    """
)
#: The task row and its procrastinate job, in one statement (see ``queue``).
_INSERT_AND_DEFER = text(
    f"""
    WITH job AS ({queue.DEFER_SQL})
    INSERT INTO tasks (id, owner_id, kind, origin, queue, state, model, request, step, total,
                       work, attempts, job_id, cancel_requested, fair_rank, batch_key, priority,
                       api_key_id, images, webhook_url)
    SELECT :id, :owner, :kind, :origin, :queue, 'queued', :model, CAST(:request AS jsonb), 0,
           :total, :work, 0, job.id, false, :rank, :batch_key, :priority, :key_id, :images,
           :webhook_url
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


def work_units(request: GenerationRequest) -> float:
    """Relative cost of a generation: denoising steps × pixels × images (a hires pass's
    steps at its size added)."""
    steps = request.steps * (request.strength if request.is_img2img else 1.0)
    pixels = max(1.0, steps) * request.width * request.height
    width, height = request.output_size
    pixels += hires_steps(request) * width * height
    return pixels * request.n_images


class TaskSubmitter:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage,
        catalog: Catalog,
        reads: TaskReads,
        uploads: Uploads,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.catalog = catalog
        self.reads = reads
        self.uploads = uploads
        self.free_space = FreeSpace(settings, storage)

    # -- generation -------------------------------------------------------------------------

    def submit_generation(
        self,
        caller: Principal,
        request: GenerationRequest,
        *,
        origin: str,
        uploads: NewUploads | None = None,
        priority: int | None = None,
        webhook_url: str | None = None,
        webhook_field: str = "webhook_url",
    ) -> TaskRecord:
        """Check ``request`` completely, then store the images in ``uploads`` that it uses
        and queue it, in one unit, at the caller's level (or the lower ``priority`` asked),
        to announce its end at ``webhook_url`` (a field the dialect calls ``webhook_field``).
        Raises before anything is stored."""
        owner_id, level = caller.id, caller.priority_for(priority)
        if webhook_url is not None:
            fetch.check_url(webhook_url, field=webhook_field, settings=self.settings)
        request = apply_styles(self._resolve_trained(owner_id, request), self.settings)
        model = self.catalog.find("checkpoints", request.model)
        # Its family's defaults first: checking canonicalises the sampler it may default.
        request = fit(request, model.architecture).checked(self.settings)
        for index, lora in enumerate(request.loras):
            if lora.name.startswith("@"):
                continue  # a trained LoRA (a private name): trained on an SD base
            param = f"loras.{index}.name"
            found = self.catalog.find("loras", lora.name, param=param)
            check_lora(model.architecture, found.architecture, name=lora.name, param=param)
        if request.vae:
            self.catalog.find("vae", request.vae, param="vae")
        for index, name in enumerate(request.embeddings):
            self.catalog.find("embeddings", name, param=f"embeddings.{index}")
        held = held_annotators((u.preprocessor for u in request.controlnets), self.catalog.names)
        for index, unit in enumerate(request.controlnets):
            self.catalog.find("controlnet", unit.model, param=f"controlnets.{index}.model")
            check_preprocessor(unit.preprocessor, held, param=f"controlnets.{index}.preprocessor")
        if request.ip_adapter is not None:
            self.catalog.find("ipadapter", request.ip_adapter.name, param="ip_adapter.name")
        refiner = None
        if request.refiner is not None:
            refiner = self.catalog.find("checkpoints", request.refiner.model, param="refiner.model")
        check_families(model, refiner)
        if request.hires is not None:
            check_upscaler(self.catalog, request.hires.upscaler, param="hires.upscaler")
        if request.sd_upscale is not None:
            check_upscaler(self.catalog, request.sd_upscale.upscaler, param="sd_upscale.upscaler")
        keys, new = self._resolve_images(owner_id, request, uploads)
        work = work_units(request) * self._tile_count(owner_id, request, new)
        request = request.with_images(keys)
        if request.inpaint is not None:
            self._check_mask(request, new)
        return self.enqueue(
            caller,
            kind="generate",
            origin=origin,
            model=request.model,
            request=request.model_dump(mode="json"),
            total=request.steps + hires_steps(request),
            work=work,
            new_uploads=list(new.values()),
            batch_key=request.batch_key(),
            priority=level,
            images=request.n_images,
            webhook_url=webhook_url,
        )

    def _resolve_images(
        self, owner_id: uuid.UUID, request: GenerationRequest, uploads: NewUploads | None
    ) -> tuple[dict[str, ImageRef], dict[uuid.UUID, CheckedImage]]:
        """The storage key of each input image, and the new uploads among them. Each must be
        one of the caller's uploads (stored, or arriving with this request)."""
        keys: dict[str, ImageRef] = {}
        new: dict[uuid.UUID, CheckedImage] = {}
        for field, ref in request.image_refs().items():
            if ref.upload is None:
                raise InvalidRequest(f"{field}: give an upload id", param=field)
            arriving = uploads.get(ref.upload) if uploads is not None else None
            if arriving is not None:
                new[arriving.id] = arriving
                keys[field] = ImageRef.stored(arriving.key)
                continue
            found = self.uploads.find(owner_id, ref.upload)
            if found is None:
                raise InvalidRequest(f"{field}: no upload {ref.upload}", param=field)
            keys[field] = ImageRef.stored(found.key)
        return keys, new

    def _tile_count(
        self, owner_id: uuid.UUID, request: GenerationRequest, new: dict[uuid.UUID, CheckedImage]
    ) -> int:
        """How many image-to-image tiles an SD upscale request runs (1 for any other), or
        InvalidRequest when it cannot tile (``SdUpscale.tiles``)."""
        options = request.sd_upscale
        if options is None or request.init_image is None or request.init_image.upload is None:
            return 1
        image = new.get(request.init_image.upload) or self.uploads.find(
            owner_id, request.init_image.upload
        )
        if image is None:
            return 1
        size = options.upscaled(image.width, image.height)
        across, down = options.tiles(size, (request.width, request.height))
        return len(across) * len(down)

    def _check_mask(self, request: GenerationRequest, new: dict[uuid.UUID, CheckedImage]) -> None:
        """A mask that repaints nothing is refused now, not after the task has waited."""
        assert request.inpaint is not None and request.inpaint.mask.key is not None
        key = request.inpaint.mask.key
        arriving = next((image for image in new.values() if image.key == key), None)
        if arriving is not None:
            mask = arriving.decoded(self.settings)
        else:
            mask = decode_image(
                self.storage.get(key),
                field="inpaint.mask",
                max_pixels=self.settings.max_input_pixels,
            )
        repaint_mask(mask, invert=request.inpaint.invert, field="inpaint.mask")

    def _resolve_trained(
        self, owner_id: uuid.UUID, request: GenerationRequest
    ) -> GenerationRequest:
        """Checks the model and LoRA names, resolving the caller's trained models: as the
        model, its base with its LoRA and trigger word; as a LoRA, its private library name.
        Public names win. A private name written out (``@…/…``) is refused like any unknown
        name: it is the service's to hand out, never the caller's to choose."""
        public_loras = set(self.catalog.names("loras"))
        loras = list(request.loras)
        for index, lora in enumerate(loras):
            if lora.name not in public_loras:
                trained = self.trained_model(owner_id, lora.name)
                if trained is None:
                    raise self.catalog.unknown("loras", lora.name, param=f"loras.{index}.name")
                loras[index] = lora.model_copy(update={"name": trained.lora})
        update: dict[str, Any] = {"loras": tuple(loras)}
        if request.model not in self.catalog.names("checkpoints"):
            trained = self.trained_model(owner_id, request.model)
            if trained is None:
                raise self.catalog.unknown("checkpoints", request.model, param="model")
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
        with self.reads.sessions() as session:
            row = session.execute(_TRAINED, {"owner": owner_id, "name": name}).one_or_none()
        if row is None:
            return None
        return TrainedRecord(name, row.base_model, row.trigger_word, private_name(owner_id, name))

    # -- any kind ---------------------------------------------------------------------------

    def enqueue(
        self,
        caller: Principal,
        *,
        kind: str,
        origin: str,
        model: str,
        request: dict[str, Any],
        total: int,
        work: float,
        new_uploads: list[CheckedImage] | None = None,
        also: Callable[[Session, uuid.UUID], None] | None = None,
        batch_key: str | None = None,
        priority: int | None = None,
        images: int = 0,
        webhook_url: str | None = None,
    ) -> TaskRecord:
        """Insert a task of ``kind`` (asking for ``images`` images) and its job, at level
        ``priority`` (None: the caller's), after the queue limits and the caller's quotas,
        with the rows of ``new_uploads`` (their files stored first, removed again if nothing
        commits); ``also(session, task_id)`` writes rows that belong with it, in the same
        transaction. A retried request (its Idempotency-Key seen with the same body) gets
        the task its first try queued, and queues nothing."""
        owner_id, task_id, queue_name = caller.id, uuid.uuid4(), queue.QUEUES[kind]
        priority = caller.priority if priority is None else priority
        arriving = new_uploads or []
        with storing(self.storage, arriving) as write, self.sessions.begin() as session:
            first = idempotency.original(session, owner_id)
            if first is not None:
                return self.reads.get(owner_id, first)
            quotas.check(session, owner_id, caller.key_id, images)
            self.free_space.check()
            if webhook_url is not None:
                webhooks.ensure_secret(session, owner_id)
            rank = fairness.next_rank(session, owner_id)
            ahead, ahead_work = self._check_limits(session, owner_id, queue_name, rank, priority)
            write()
            session.add_all([image.row(owner_id) for image in arriving])
            session.flush()
            created_at, _ = session.execute(
                _INSERT_AND_DEFER,
                {
                    "id": task_id,
                    "owner": owner_id,
                    "kind": kind,
                    "origin": origin,
                    "queue": queue_name,
                    "job_queue": queue.job_queue(kind, model),
                    "model": model,
                    "request": json.dumps(request),
                    "total": total,
                    "work": work,
                    "task_name": queue.TASK_NAMES[kind],
                    "rank": rank,
                    "batch_key": batch_key,
                    "priority": priority,
                    "key_id": caller.key_id,
                    "images": images,
                    "webhook_url": webhook_url,
                    "args": json.dumps({"task_id": str(task_id)}),
                },
            ).one()
            idempotency.remember(session, owner_id, task_id)
            if also is not None:
                also(session, task_id)
                session.flush()
            row = dict(
                id=task_id,
                owner_id=owner_id,
                kind=kind,
                origin=origin,
                state="queued",
                model=model,
                request=request,
                step=0,
                total=total,
                work=work,
                attempts=0,
                error=None,
                created_at=created_at,
                started_at=None,
                finished_at=None,
                ahead=ahead,
                ahead_work=ahead_work,
                images=None,
                priority=priority,
            )
            return self.reads.record(session, row)

    def _check_limits(
        self, session: Session, owner_id: uuid.UUID, queue_name: str, rank: int, priority: int
    ) -> tuple[int, float]:
        """Refuse with Overloaded past a queue limit; else (tasks, work) ahead of a new task
        of fair rank ``rank`` at level ``priority``.

        Deliberately lock-free: submits racing at the very same moment can each pass the
        check, so a limit can be exceeded by the number of submits in flight at once. Exact
        enforcement would serialise all of a user's submits."""
        mine, my_smallest, everyone, smallest, ahead, ahead_work = session.execute(
            _LIMITS, {"owner": owner_id, "queue": queue_name, "rank": rank, "priority": priority}
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
        return ahead, ahead_work  # behind every queued task of its rank or lower

    def _retry_after(self, session: Session, work: float | None) -> int:
        """Roughly when one slot frees up: the smallest queued task's run time."""
        seconds = (work or 0) * self.reads.eta.speed(session, None)
        return min(60, max(1, math.ceil(seconds)))
