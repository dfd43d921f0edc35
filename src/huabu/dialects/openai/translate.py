"""Translation between OpenAI's images API and huabu's native requests and task records: pure
functions, unit-tested without a server (tests/test_translations.py)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from huabu.catalog.architectures import native_size
from huabu.catalog.library import ModelInfo
from huabu.dialects.openai.wire import GenerationIn
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest
from huabu.settings import Settings

_SIZE = re.compile(r"^\s*(\d{1,5})x(\d{1,5})\s*$")


#: OpenAI's quality levels → sampling steps.
_STEPS = {
    "low": 12,
    "auto": 25,
    "standard": 25,
    "medium": 25,
    "high": 40,
    "hd": 40,
    "xhigh": 50,
    "max": 60,
}
#: The SDK's fields for OpenAI's animated and SVG models.
_OTHER_MODELS = ("complexity", "frame_count", "frame_duration_ms", "svg", "markup")


def check_fields(body: GenerationIn) -> None:
    """InvalidRequest naming a field whose meaning huabu cannot give."""
    for name in _OTHER_MODELS:
        if getattr(body, name, None) is not None:
            raise InvalidRequest(
                f"{name}: for OpenAI's animation and SVG models; huabu's models make still images",
                param=name,
            )
    if body.partial_images and not body.stream:
        raise InvalidRequest("partial_images: they come with stream: true", param="partial_images")
    if body.background == "transparent":
        raise InvalidRequest(
            "background: the models here paint every pixel; transparent backgrounds are not "
            "available (opaque and auto are)",
            param="background",
        )
    if body.output_format == "png" and body.output_compression not in (None, 100):
        raise InvalidRequest(
            "output_compression: for jpeg and webp (png is lossless)", param="output_compression"
        )


def _size(value: str | None, fallback: tuple[int, int]) -> tuple[int, int]:
    """``WxH``, or ``fallback`` for "auto" (or none)."""
    if value in (None, "", "auto"):
        return fallback
    match = _SIZE.match(value)
    if match is None:
        raise InvalidRequest(
            f"size must look like 1024x1024 or be 'auto', got {value!r}", param="size"
        )
    return int(match[1]), int(match[2])


def native_square(entry: ModelInfo | None) -> tuple[int, int]:
    """What ``size: auto`` means for a model: the square it was trained at (1024 for SDXL,
    768 for SD 2.x v-models, 512 for SD 1.x and for the tiny demos), or 512 if unknown."""
    if entry is None or entry.architecture is None:
        return 512, 512
    side = entry.native_size or native_size(entry.architecture)
    return side, side


def to_native(
    body: GenerationIn,
    *,
    model: str,
    auto_size: tuple[int, int],
    settings: Settings,
    init_image: uuid.UUID | None = None,
    strength: float = 0.75,
    mask: uuid.UUID | None = None,
) -> GenerationRequest:
    """Pure translation. ``model`` is already resolved (see ``_resolve_model``); ``auto_size`` is
    what ``size: auto`` means (the model's native square, or the input image's size for edits);
    ``init_image`` and ``mask`` are upload ids."""
    check_fields(body)
    if body.n > settings.max_images:
        raise InvalidRequest(
            f"n must be between 1 and {settings.max_images}, got {body.n}", param="n"
        )
    width, height = _size(body.size, auto_size)
    return GenerationRequest.parse(
        {
            "model": model,
            "prompt": body.prompt,
            "width": width,
            "height": height,
            "steps": _STEPS[body.quality],
            "n_images": body.n,
            "init_image": init_image,
            "strength": strength,
            "inpaint": {"mask": mask} if mask else None,
            "output_format": body.output_format,
            "output_quality": body.output_compression if body.output_format != "png" else None,
            "partial_images": (body.partial_images or 0) if body.stream else 0,
        },
        # Steps follow ``quality`` unless it is left out or "auto" (the model's best); OpenAI
        # has no strength (an edit's is huabu's choice). A family with defaults of its own
        # (FLUX.1 …) replaces what the caller did not choose.
        sent=body.model_fields_set - ({"quality"} if body.quality == "auto" else set()),
        wire_names={"steps": "quality", "strength": ""},
    )


_WORDS = re.compile(r"\w+|[^\w\s]")


def usage(prompt: str) -> dict[str, Any]:
    """OpenAI's ``usage``, counted as huabu counts: the prompt's words and marks are its text
    tokens; images count none (huabu bills no tokens; its quotas count images and steps)."""
    text = len(_WORDS.findall(prompt))
    return {
        "total_tokens": text,
        "input_tokens": text,
        "output_tokens": 0,
        "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
    }


def renamed(error: InvalidRequest) -> InvalidRequest:
    param = {
        "width": "size",
        "height": "size",
        "n_images": "n",
        "inpaint": "mask",
        "inpaint.mask": "mask",
    }.get(error.param or "")
    if param is None:
        return error
    return InvalidRequest(f"{param}: {error.message}", param=param)


def model_out(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "huabu"}
