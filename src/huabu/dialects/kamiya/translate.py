"""Translation between kamiya's image API (spec 002) and huabu's native requests and task records:
pure functions, unit-tested without a server (tests/test_translations.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from huabu.dialects.kamiya.wire import GenerateIn
from huabu.errors import InvalidRequest, NotFound
from huabu.native import MAX_LORAS, GenerationRequest
from huabu.tasks.records import TaskRecord

_STATUS = {
    "queued": "created",
    "running": "generating",
    "succeeded": "generated",
    "failed": "failed",
    "cancelled": "failed",
}


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def hashid(task_id: uuid.UUID) -> str:
    number, digits = task_id.int, []
    while number:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
    return "".join(reversed(digits)) or "0"


def task_id_of(value: str) -> uuid.UUID:
    """The task behind a hashid, or NotFound."""
    try:
        number = int(value.lower(), 36)
        return uuid.UUID(int=number)
    except ValueError:
        raise NotFound(f"no task {value}") from None


def to_native(body: GenerateIn, *, model: str, init_image: uuid.UUID | None) -> GenerationRequest:
    """Pure translation; ``init_image`` is the upload id of ``image``."""
    if len(body.LoRAs) > MAX_LORAS:
        raise InvalidRequest(f"LoRAs: at most {MAX_LORAS}, got {len(body.LoRAs)}", param="LoRAs")
    return GenerationRequest.parse(
        {
            "model": model,
            "prompt": body.prompts,
            "negative_prompt": body.negativePrompts,
            "width": body.width,
            "height": body.height,
            "steps": body.step,
            "guidance": body.cfg,
            "seed": body.seed,
            "sampler": body.sampling,
            "n_images": 1,
            "init_image": init_image,
            # kamiya's weight is a percentage: 60 = strength 0.6.
            "loras": [{"name": lora.id, "weight": lora.weight / 100} for lora in body.LoRAs],
            "output_format": "jpeg",
        },
        sent=body.model_fields_set,
        wire_names={"steps": "step", "guidance": "cfg", "sampler": "sampling"},
    )


def renamed(error: InvalidRequest) -> InvalidRequest:
    """A native validation error naming kamiya's field: ``loras.0.name`` → ``LoRAs.0.id``."""
    native = {"loras": "LoRAs", "steps": "step", "guidance": "cfg", "sampler": "sampling"}
    head, _, rest = (error.param or "").partition(".")
    if head not in native:
        return error
    param = native[head] + ("." + rest.replace(".name", ".id") if rest else "")
    return InvalidRequest(f"{param}: {error.message}", param=param)


def _stamp(moment: datetime | None) -> str:
    return moment.strftime("%m-%d %H:%M:%S") if moment else ""


def from_native(record: TaskRecord, image_url) -> dict[str, Any]:
    request = record.request
    assert isinstance(request, GenerationRequest)
    metadata: dict[str, Any] = {
        "LoRAs": [
            {"id": lora.name, "weight": round(lora.weight * 100, 2)} for lora in request.loras
        ],
        "model": request.model,
        "width": request.width,
        "height": request.height,
        "type": "image2image" if request.is_img2img else "text2image",
        "prompts": request.prompt,
        "negativePrompts": request.negative_prompt,
        "sampling": request.sampler,
        "step": request.steps,
        "cfg": request.guidance,
        "seed": request.seed,
        "batch": request.n_images,
        "artboard": f"{request.width}x{request.height}",
    }
    if record.state == "succeeded" and record.images:
        metadata["jpg"] = image_url(record.images[0].key)
    elif record.finished:
        metadata["jpg"] = ""
    data: dict[str, Any] = {
        "id": hashid(record.id)[:7],
        "hashid": hashid(record.id),
        "metaid": record.id.hex,
        "status": _STATUS[record.state],
        "metadata": metadata,
        "userId": str(record.owner_id),
        "createdAt": _stamp(record.created_at),
        "updatedAt": _stamp(record.finished_at or record.started_at or record.created_at),
    }
    if record.state in ("failed", "cancelled"):
        data["error"] = record.error
    return data
