"""What a task looks like to the layers above the queue: plain, frozen, dialect-neutral."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from huabu.native import GenerationRequest
from huabu.native.training import TrainingPlan

TaskState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
UNFINISHED: tuple[str, ...] = ("queued", "running")


@dataclass(frozen=True)
class ImageRecord:
    index: int
    seed: int
    key: str
    preview_key: str
    format: str
    width: int
    height: int
    size_bytes: int
    infotext: str


@dataclass(frozen=True)
class TaskRecord:
    id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    origin: str
    state: TaskState
    model: str
    request: GenerationRequest | TrainingPlan
    step: int
    total: int
    attempts: int
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: Tasks ahead of this one in its queue (0 = next); None once it has started.
    queue_position: int | None = None
    #: Estimated seconds until it finishes; None when finished or no worker is alive.
    eta_seconds: float | None = None
    images: tuple[ImageRecord, ...] = field(default=())
    #: How many tasks its (last) run shared one denoising loop with, itself included.
    batch_size: int = 1
    #: The level it was queued at (higher goes first).
    priority: int = 0
    #: While running: its live preview (PNG at the latent size), once one was made.
    preview: bytes | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def percent(self) -> float:
        if self.state == "succeeded":
            return 100.0
        return round(100.0 * self.step / self.total, 1) if self.total else 0.0


@dataclass(frozen=True)
class UploadRecord:
    id: uuid.UUID
    key: str
    content_type: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class TrainedRecord:
    """A trained model as generation sees it: ``lora`` is its private library name."""

    name: str
    base_model: str
    trigger_word: str
    lora: str
