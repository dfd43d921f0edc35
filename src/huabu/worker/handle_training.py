"""The handler for training tasks: load the plan's images from storage, train, leave the LoRA in
its owner's private folder of the library, and publish it to the shared store (private to its
owner), so that every worker can generate with it. A re-run (its worker died) trains again and
replaces the file; the name was reserved for this task when it was queued. The task succeeds
only once the LoRA is published; a store that fails is retried like any storage failure."""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from huabu.catalog.transfer import publish
from huabu.engine.pipelines import PipelineCache
from huabu.images import decode_image
from huabu.native.training import TrainingPlan
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.training.trainer import TrainingJob, train_lora
from huabu.worker.runner import Outcome, Progress


class TrainingHandler:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        storage: Storage,
        cache: PipelineCache,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.cache = cache

    def __call__(self, task_id: uuid.UUID, data: dict[str, Any], progress: Progress) -> Outcome:
        plan = TrainingPlan.model_validate(data)
        images = tuple(
            decode_image(
                self.storage.get(key), field="images", max_pixels=self.settings.max_input_pixels
            )
            for key in plan.images
        )
        job = TrainingJob(
            name=plan.lora,
            base_model=plan.base_model,
            images=images,
            captions=(plan.caption,) * len(images),
            steps=plan.steps,
            rank=plan.rank,
            learning_rate=plan.learning_rate,
            resolution=plan.resolution,
            # The batch a GPU fits is the worker's setting (plans queued by older servers
            # carry the API server's).
            batch_size=plan.batch_size or self.settings.train_batch_size,
            seed=plan.seed,
            metadata={
                # A1111 and ComfyUI show these words as the LoRA's tags.
                "ss_tag_frequency": json.dumps({plan.name: {plan.caption: len(images)}}),
                "ss_num_train_images": str(len(images)),
                "ss_training_comment": plan.description,
                "ss_output_name": plan.name,
            },
        )
        result = train_lora(
            self.settings,
            job,
            library=self.cache.library,
            cache=self.cache,
            on_progress=lambda step, total, _loss: progress(step, total),
            should_cancel=progress.should_cancel,
            replace=True,
        )
        library = self.cache.library
        owner = uuid.UUID(plan.lora.split("/", 1)[0].removeprefix("@"))
        publish(
            self.sessions, self.storage, library, library.find("loras", plan.lora), owner_id=owner
        )
        return Outcome(
            {
                "lora": plan.lora,
                "steps": len(result.losses),
                "loss_first": result.losses[0],
                "loss_last": result.losses[-1],
            }
        )
