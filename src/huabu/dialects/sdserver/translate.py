"""Translation between the plain SD API server (spec 004) and huabu's native requests and task
records: pure functions, unit-tested without a server (tests/test_translations.py)."""

from __future__ import annotations

import uuid

from huabu.dialects.sdserver.wire import ImageOut, ImagesOut, Img2ImgForm, Txt2ImgForm
from huabu.native import GenerationRequest
from huabu.storage import content_type
from huabu.tasks.records import TaskRecord


def to_native(
    form: Txt2ImgForm, *, model: str, init_image: uuid.UUID | None = None, size: tuple[int, int]
) -> GenerationRequest:
    """Pure translation: spec 004 fields → the native request; ``init_image`` is the upload
    id of the form's image."""
    return GenerationRequest.parse(
        {
            "model": model,
            "prompt": form.prompt,
            "negative_prompt": form.negative_prompt,
            "width": size[0],
            "height": size[1],
            "steps": form.num_inference_steps,
            "guidance": form.guidance_scale,
            "seed": form.seed,
            "n_images": form.num_outputs,
            "init_image": init_image,
            "strength": form.strength if isinstance(form, Img2ImgForm) else 0.75,
        },
        sent=form.model_fields_set,
        wire_names={"steps": "num_inference_steps", "guidance": "guidance_scale"},
    )


def from_native(record: TaskRecord, sign) -> ImagesOut:
    return ImagesOut(
        images=[
            ImageOut(image_url=sign(image.key), mime_type=content_type(image.key), seed=image.seed)
            for image in record.images
        ]
    )


def round8(value: int) -> int:
    return max(8, value - value % 8)
