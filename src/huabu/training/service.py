"""Datasets and training tasks: what dialects call for LoRA training (spec 001's routes).

A dataset is a named list of the caller's uploads. Submitting a training reserves the model's
name for the caller (names are unique per owner) in the transaction that queues the task; the
model can be used by that name once the task has succeeded (``TaskSubmitter.trained_model``).
Everything is scoped to the caller: someone else's dataset is simply not found.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from huabu.auth import Principal
from huabu.catalog.library import private_name
from huabu.catalog.transfer import blob_key
from huabu.db.tables import Dataset, Task, TrainedModel, Upload
from huabu.errors import InvalidRequest, NotFound
from huabu.native import printable
from huabu.native.training import TrainingPlan, TrainingRequest, caption
from huabu.settings import Settings
from huabu.tasks.cancel import cancel_task
from huabu.tasks.records import TaskRecord
from huabu.tasks.submit import TaskSubmitter
from huabu.tasks.uploads import NewUploads, storing
from huabu.training import TRAINABLE

#: A private LoRA's catalog rows go; the blobs only it used are returned for deletion (the
#: query sees the table as before the DELETE, hence the name excluded).
_FORGET_MODEL = text(
    """
    WITH gone AS (DELETE FROM models WHERE kind = 'loras' AND name = :name RETURNING files)
    SELECT DISTINCT item->>'sha256' FROM gone, jsonb_array_elements(gone.files) item
     WHERE NOT EXISTS (SELECT 1 FROM models m, jsonb_array_elements(m.files) other
                        WHERE other->>'sha256' = item->>'sha256'
                          AND NOT (m.kind = 'loras' AND m.name = :name))
    """
)

#: A training step (forward and backward over a batch) in generation work units: about
#: three UNet passes per image against a generation step's two (with guidance).
_WORK_PER_IMAGE_STEP = 1.5


@dataclass(frozen=True)
class DatasetRecord:
    id: int
    name: str
    description: str
    #: Storage keys of its images, in order.
    images: tuple[str, ...]
    created_at: datetime
    updated_at: datetime


def _record(row: Dataset) -> DatasetRecord:
    return DatasetRecord(
        row.id, row.name, row.description, tuple(row.images), row.created_at, row.updated_at
    )


class TrainingService:
    def __init__(self, settings: Settings, submitter: TaskSubmitter) -> None:
        self.settings = settings
        self.submitter = submitter
        self.reads = submitter.reads
        self.catalog = submitter.catalog

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(
        self,
        owner_id: uuid.UUID,
        name: str,
        description: str,
        images: list[uuid.UUID],
        uploads: NewUploads | None = None,
    ) -> DatasetRecord:
        """A dataset of the caller's uploads ``images``: stored ones, or ones arriving with
        this request in ``uploads``, which are stored with the dataset or not at all."""
        name = name.strip()
        if not 1 <= len(name) <= 200:
            raise InvalidRequest("name: a dataset needs 1 to 200 characters", param="name")
        for param, value in (("name", name), ("description", description)):
            try:
                printable(value)
            except ValueError as exc:
                raise InvalidRequest(f"{param}: {exc}", param=param) from None
        if not images:
            raise InvalidRequest("images: a dataset needs at least one image", param="images")
        limit = self.settings.max_dataset_images
        if len(images) > limit:
            raise InvalidRequest(
                f"images: at most {limit} images per dataset, got {len(images)}", param="images"
            )
        new = uploads.used(images) if uploads is not None else []
        arriving = {image.id: image.key for image in new}
        sessions, storage = self.submitter.sessions, self.submitter.storage
        with storing(storage, new) as write, sessions.begin() as session:
            owned = {
                upload_id: key
                for upload_id, key in session.execute(
                    select(Upload.id, Upload.key).where(
                        Upload.owner_id == owner_id, Upload.id.in_(images)
                    )
                )
            }
            keys = []
            for index, upload_id in enumerate(images):
                key = arriving.get(upload_id) or owned.get(upload_id)
                if key is None:
                    raise InvalidRequest(
                        f"images.{index}: not an image you uploaded", param=f"images.{index}"
                    )
                keys.append(key)
            write()
            session.add_all([image.row(owner_id) for image in new])
            row = Dataset(owner_id=owner_id, name=name, description=description, images=keys)
            session.add(row)
            session.flush()
            session.refresh(row)
            return _record(row)

    def datasets(
        self, owner_id: uuid.UUID, *, page: int = 1, per_page: int = 20
    ) -> tuple[list[DatasetRecord], int]:
        """One page of the caller's datasets, oldest first, and how many there are."""
        if page < 1:
            raise InvalidRequest(f"page must be 1 or more, got {page}", param="page")
        if not 1 <= per_page <= 100:
            raise InvalidRequest(
                f"per_page must be between 1 and 100, got {per_page}", param="per_page"
            )
        with self.reads.sessions() as session:
            total = session.scalar(
                select(func.count()).select_from(Dataset).where(Dataset.owner_id == owner_id)
            )
            rows = session.scalars(
                select(Dataset)
                .where(Dataset.owner_id == owner_id)
                .order_by(Dataset.id)
                .limit(per_page)
                .offset((page - 1) * per_page)
            ).all()
            return [_record(row) for row in rows], total or 0

    # -- training ---------------------------------------------------------------------------

    def base_models(self) -> list[str]:
        """Checkpoints the trainer can train on."""
        return [e.name for e in self.catalog.entries("checkpoints") if e.architecture in TRAINABLE]

    def submit(self, caller: Principal, request: TrainingRequest, *, origin: str) -> TaskRecord:
        """Validate completely, reserve the name, queue the training (at the caller's level).
        Nothing is created when anything is refused."""
        owner_id = caller.id
        request = request.checked(self.settings)
        base = request.base_model or self.catalog.default_model()
        entry = self.catalog.find("checkpoints", base, param="base_model")
        if entry.architecture not in TRAINABLE:
            raise InvalidRequest(
                f"base_model: {base!r} is {entry.describe_architecture}; training supports "
                f"{', '.join(self.base_models()) or 'no model on this server'}",
                param="base_model",
            )
        name = request.name
        if name in self.catalog.names("checkpoints") or name in self.catalog.names("loras"):
            raise InvalidRequest(f"name: this server has a model called {name!r}", param="name")
        keys = self._images(owner_id, request.datasets)
        plan = TrainingPlan(
            **request.model_dump(exclude={"base_model"}),
            base_model=base,
            lora=private_name(owner_id, name),
            images=keys,
            caption=caption(request.trigger_word, request.main_body),
        )

        def reserve(session: Session, task_id: uuid.UUID) -> None:
            # A name whose training failed or was cancelled is free again.
            session.execute(
                delete(TrainedModel).where(
                    TrainedModel.owner_id == owner_id,
                    TrainedModel.name == name,
                    TrainedModel.task_id.in_(
                        select(Task.id).where(Task.state.in_(("failed", "cancelled")))
                    ),
                )
            )
            session.add(
                TrainedModel(
                    owner_id=owner_id,
                    name=name,
                    task_id=task_id,
                    base_model=base,
                    trigger_word=request.trigger_word.strip(),
                    description=request.description,
                    main_body=request.main_body,
                    nsfw=request.nsfw,
                )
            )

        try:
            return self.submitter.enqueue(
                caller,
                kind="train",
                origin=origin,
                model=base,
                request=plan.model_dump(mode="json"),
                total=plan.steps,
                work=plan.steps
                * (plan.resolution or 512) ** 2
                * min(len(keys), self.settings.train_batch_size)  # an estimate, for the ETA
                * _WORK_PER_IMAGE_STEP,
                also=reserve,
            )
        except IntegrityError:
            raise InvalidRequest(
                f"name: you already have a model called {name!r}", param="name"
            ) from None

    def _images(self, owner_id: uuid.UUID, ids: tuple[int, ...]) -> tuple[str, ...]:
        """The images of the caller's datasets ``ids``, each once, in order."""
        with self.reads.sessions() as session:
            rows = {
                row.id: row
                for row in session.scalars(
                    select(Dataset).where(Dataset.owner_id == owner_id, Dataset.id.in_(ids))
                )
            }
        keys: dict[str, None] = {}
        for index, dataset_id in enumerate(ids):
            if dataset_id not in rows:
                raise InvalidRequest(
                    f"datasets.{index}: no dataset {dataset_id}", param=f"datasets.{index}"
                )
            keys.update(dict.fromkeys(rows[dataset_id].images))
        if not keys:
            raise InvalidRequest("datasets: the datasets have no images", param="datasets")
        if len(keys) > self.settings.max_dataset_images:
            raise InvalidRequest(
                f"datasets: at most {self.settings.max_dataset_images} images per training, "
                f"got {len(keys)}",
                param="datasets",
            )
        return tuple(keys)

    def trained_names(self, owner_id: uuid.UUID) -> list[str]:
        """The caller's usable trained models (their training succeeded), by name."""
        with self.reads.sessions() as session:
            return list(
                session.scalars(
                    select(TrainedModel.name)
                    .join(Task, Task.id == TrainedModel.task_id)
                    .where(TrainedModel.owner_id == owner_id, Task.state == "succeeded")
                    .order_by(TrainedModel.name)
                )
            )

    # -- deleting ---------------------------------------------------------------------------

    def delete_dataset(self, owner_id: uuid.UUID, dataset_id: int) -> None:
        """The caller's dataset goes; its uploads go with the housekeeping a day after they
        were uploaded, unless a task (a queued training, say) or another dataset uses them."""
        with self.reads.sessions.begin() as session:
            gone = session.scalar(
                delete(Dataset)
                .where(Dataset.id == dataset_id, Dataset.owner_id == owner_id)
                .returning(Dataset.id)
            )
        if gone is None:
            raise NotFound(f"no dataset {dataset_id}")

    def delete_trained(self, owner_id: uuid.UUID, name: str) -> None:
        """The caller's trained model ``name`` goes: unusable at once, its name free again,
        its training cancelled if unfinished, its published files removed from the store
        (those no other model shares), and this server's own copy. A worker's copy on its
        own disk stays there, unusable (no name leads to it)."""
        lora = private_name(owner_id, name)
        with self.reads.sessions.begin() as session:
            task_id = session.scalar(
                delete(TrainedModel)
                .where(TrainedModel.owner_id == owner_id, TrainedModel.name == name)
                .returning(TrainedModel.task_id)
            )
            if task_id is None:
                raise NotFound(f"no trained model {name!r}")
            blobs = session.execute(_FORGET_MODEL, {"name": lora}).scalars().all()
        cancel_task(self.reads.sessions, owner_id, task_id)  # (a finished one: unchanged)
        for digest in blobs:
            self.submitter.storage.delete(blob_key(digest))
        local = self.submitter.catalog.local
        if local is not None:
            with contextlib.suppress(NotFound, InvalidRequest):
                path = local.find("loras", lora, param="name").path
                path.unlink(missing_ok=True)

    def progress(self, owner_id: uuid.UUID, task_id: str) -> TaskRecord:
        """The caller's training task; its ``request`` is the plan (name, trigger word…)."""
        record = self.reads.get(owner_id, task_id)
        if record.kind != "train":
            raise NotFound(f"no training task {task_id}")
        return record
