"""Translation between remagi/miaohua's v1b API (specs 000, 001) and huabu's native requests and
task records: pure functions, unit-tested without a server (tests/test_translations.py)."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from huabu.dialects.common import validate
from huabu.dialects.v1b.wire import SubmitIn, TrainSubmitIn
from huabu.errors import InvalidRequest
from huabu.native import MAX_SEED, GenerationRequest
from huabu.native.training import TrainingPlan, TrainingRequest
from huabu.settings import Settings
from huabu.tasks.records import TaskRecord
from huabu.training.service import DatasetRecord

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")


#: The spec's recommended resolutions by aspect ratio; the form lists those this server allows.
_RESOLUTIONS = {
    "1:1": ["512x512", "640x640", "768x768", "1024x1024"],
    "2:3": ["512x768", "640x960", "768x1152", "1024x1536"],
    "3:2": ["768x512", "960x640", "1152x768", "1536x1024"],
}


_STATES = {"queued": "pending", "running": "pending", "succeeded": "done"}


def parse_size(value: str) -> tuple[int, int]:
    match = _SIZE.match(value)
    if match is None:
        raise InvalidRequest(
            f"output_size must look like 640x640, got {value!r}", param="output_size"
        )
    return int(match[1]), int(match[2])


def to_native(
    body: SubmitIn, *, init_image: uuid.UUID | None, settings: Settings
) -> GenerationRequest:
    """Pure translation; ``init_image`` is the upload id of ``init_img``."""
    if body.n_images > settings.max_images:
        raise InvalidRequest(
            f"n_images must be between 1 and {settings.max_images}, got {body.n_images}",
            param="n_images",
        )
    width, height = parse_size(body.output_size)
    return GenerationRequest.parse(
        {
            "model": body.model_name,
            "prompt": body.prompt,
            "negative_prompt": body.neg_prompt,
            "width": width,
            "height": height,
            "guidance": body.scale,
            "seed": body.select_seed,
            "n_images": body.n_images,
            "init_image": init_image,
        },
        sent=body.model_fields_set,
        wire_names={"guidance": "scale"},
    )


_NATIVE_NAMES = {"width": "output_size", "height": "output_size", "model": "model_name"}


def renamed(error: InvalidRequest) -> InvalidRequest:
    """A native validation error, naming this dialect's field instead."""
    param = _NATIVE_NAMES.get(error.param or "")
    if param is None:
        return error
    return InvalidRequest(f"{param}: {error.message}", param=param)


def from_native(record: TaskRecord, sign) -> dict[str, Any]:
    assert isinstance(record.request, GenerationRequest)
    return {
        "state": _STATES.get(record.state, "failed"),
        "images": [
            {
                "large": sign(image.key),
                "middle": sign(image.preview_key),
                "save_index": image.index,
                "share": False,
                "shareable": True,
            }
            for image in record.images
        ],
        "error_msg": record.error or "" if record.state in ("failed", "cancelled") else "",
        "wait_time": record.queue_position or 0,
        "select_seed": record.request.seed,
        "fav": False,
    }


def generation_form(settings: Settings, models: list[str], default_model: str) -> dict[str, Any]:
    def allowed(size: str) -> bool:
        width, height = parse_size(size)
        return max(width, height) <= settings.max_size and width * height <= settings.max_pixels

    resolutions = {
        ratio: [size for size in sizes if allowed(size)] for ratio, sizes in _RESOLUTIONS.items()
    }
    return {
        "code": 0,
        "info": [
            {
                "choices": models,
                "default": default_model,
                "description": "model name",
                "name": "model_name",
                "type": "list",
            },
            {"default": "", "description": "prompt", "name": "prompt", "type": "string"},
            {
                "default": "",
                "description": "negative prompt",
                "name": "neg_prompt",
                "type": "string",
            },
            {
                "default": min(2, settings.max_images),
                "description": "number of images",
                "max": settings.max_images,
                "min": 1,
                "name": "n_images",
                "type": "int",
            },
            {
                "default": 7,
                "description": "Guidance Scale",
                "max": 20,
                "min": 1,
                "name": "scale",
                "type": "int",
            },
            {
                "default": -1,
                "description": "seed",
                "max": MAX_SEED,
                "min": 0,
                "name": "select_seed",
                "type": "int",
            },
            {
                "choices": {ratio: sizes for ratio, sizes in resolutions.items() if sizes},
                "default": "512x512",
                "description": "resolution",
                "name": "resolution",
                "type": "dict",
            },
            {"default": "", "description": "init image url", "name": "init_img", "type": "str"},
        ],
        "msg": "",
    }


#: ``base_model`` values that mean "let the server choose" (the spec's default is 自动选择).
_AUTOMATIC = {"", "自动选择", "auto", "automatic"}


_TRAINING_STATES = {"queued": "pending", "running": "running", "succeeded": "done"}


def training_to_native(body: TrainSubmitIn) -> TrainingRequest:
    base = body.base_model.strip()
    return validate(
        TrainingRequest,
        {
            "name": body.name,
            "base_model": None if base.lower() in _AUTOMATIC else base,
            "datasets": body.dataset,
            "trigger_word": body.trigger_word,
            "main_body": body.main_body,
            "description": body.description,
            "nsfw": bool(body.nsfw),  # the spec's example: 1 is nsfw, 0 is not
            "steps": body.steps,
            "rank": body.rank,
            "learning_rate": body.learning_rate,
            "resolution": body.resolution,
            "seed": body.seed,
        },
    )


def training_renamed(error: InvalidRequest) -> InvalidRequest:
    """A native training error, naming this dialect's field (``datasets.N`` → ``dataset``)."""
    param = error.param or ""
    if param == "datasets" or param.startswith("datasets."):
        return InvalidRequest(error.message.replace("datasets", "dataset", 1), param="dataset")
    return error


def _time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def dataset_out(record: DatasetRecord, url) -> dict[str, Any]:
    images = [url(key) for key in record.images]
    return {
        "id": record.id,
        "name": record.name,
        "description": record.description,
        "demo_picture": images[0] if images else "",
        "create_time": _time(record.created_at),
        "update_time": _time(record.updated_at),
        "images": images,
        "images_num": len(images),
    }


def progress_out(record: TaskRecord) -> dict[str, Any]:
    plan = record.request
    assert isinstance(plan, TrainingPlan)
    done = record.state == "succeeded"
    return {
        "create_time": _time(record.created_at),
        "description": plan.description,
        "main_body": plan.main_body,
        "model_name": plan.name,
        "state": _TRAINING_STATES.get(record.state, record.state),
        "training_progress": 1.0 if done else round(record.step / max(record.total, 1), 4),
        "trigger_word": plan.trigger_word,
        "base_model": plan.base_model,
        "error_msg": record.error or "" if record.state in ("failed", "cancelled") else "",
    }
