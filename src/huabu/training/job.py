"""The handler for training tasks: load the plan's images from storage, train, and leave the
LoRA in its owner's private folder of the library. A re-run (its worker died) trains again and
replaces the file; the name was reserved for this task when it was queued."""

from __future__ import annotations

import json
import uuid
from typing import Any

from huabu.engine.pipelines import PipelineCache
from huabu.images import decode_image
from huabu.native.training import TrainingPlan
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.tasks.runner import Outcome, Progress
from huabu.training.trainer import TrainingJob, train_lora


class TrainingHandler:
    def __init__(self, settings: Settings, storage: Storage, cache: PipelineCache) -> None:
        self.settings = settings
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
        return Outcome(
            {
                "lora": plan.lora,
                "steps": len(result.losses),
                "loss_first": result.losses[0],
                "loss_last": result.losses[-1],
            }
        )
