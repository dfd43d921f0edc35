"""Translation between novita's v3 API (spec 003) and huabu's native requests and task records:
pure functions, unit-tested without a server (tests/test_translations.py)."""

from __future__ import annotations

import uuid
from typing import Any

from huabu.catalog.architectures import Architecture
from huabu.catalog.shared import Catalog
from huabu.dialects.novita.wire import ExtraIn, HiresFixIn, Img2ImgIn, Txt2ImgIn
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest
from huabu.settings import Settings
from huabu.tasks.records import TaskRecord

_STATUS = {
    "queued": "TASK_STATUS_QUEUED",
    "running": "TASK_STATUS_PROCESSING",
    "succeeded": "TASK_STATUS_SUCCEED",
    "failed": "TASK_STATUS_FAILED",
    "cancelled": "TASK_STATUS_FAILED",
}


_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def unsupported(body: Txt2ImgIn) -> None:
    present = {"hires_fix": isinstance(body, Img2ImgIn) and body.hires_fix is not None}
    for field, used in present.items():
        if used:
            raise InvalidRequest(
                f"request.{field}: not supported by this server yet; leave it out",
                param=f"request.{field}",
            )


def model_name(value: str) -> str:
    """novita names models with their file suffix; huabu's library names are stems."""
    for suffix in _SUFFIXES:
        if value.endswith(suffix):
            return value[: -len(suffix)]
    return value


def to_native(
    body: Txt2ImgIn,
    extra: ExtraIn,
    *,
    init_image: uuid.UUID | None = None,
    control_images: tuple[uuid.UUID, ...] = (),
    ip_image: uuid.UUID | None = None,
    refiner_model: str | None = None,
) -> GenerationRequest:
    """Pure translation; ``init_image``, ``control_images`` and ``ip_image`` are the upload
    ids of the request's image, its ControlNet units' images and its IP-Adapter's image;
    ``refiner_model`` is the server's SDXL refiner (see ``refiner_for``), if it has one."""
    unsupported(body)
    refiner = None
    if body.refiner is not None:
        if refiner_model is None:
            raise InvalidRequest(
                "request.refiner: this server has no SDXL refiner (its operator sets "
                "HUABU_REFINER_MODEL); leave it out",
                param="request.refiner",
            )
        refiner = {"model": refiner_model, "switch_at": body.refiner.switch_at}
    units = body.controlnet.units if body.controlnet else []
    adapters = body.ip_adapters or []
    ip_adapter = None
    if adapters and ip_image is not None:
        ip_adapter = {
            "name": model_name(adapters[0].model_name),
            "image": ip_image,
            "scale": adapters[0].strength,
        }
    return GenerationRequest.parse(
        {
            "model": model_name(body.model_name),
            "prompt": body.prompt,
            "negative_prompt": body.negative_prompt or "",
            "width": body.width,
            "height": body.height,
            "steps": body.steps,
            "guidance": body.guidance_scale,
            "sampler": body.sampler_name,
            "seed": -1 if body.seed is None else body.seed,
            "n_images": body.image_num,
            "init_image": init_image,
            "strength": body.strength if isinstance(body, Img2ImgIn) else 0.75,
            "clip_skip": body.clip_skip or 1,
            "vae": model_name(body.sd_vae) if body.sd_vae else None,
            "loras": [
                {"name": model_name(lora.model_name), "weight": lora.strength}
                for lora in body.loras or ()
            ],
            "embeddings": [model_name(e.model_name) for e in body.embeddings or ()],
            "controlnets": [
                {
                    "model": model_name(unit.model_name),
                    "image": image,
                    "preprocessor": unit.preprocessor,
                    "scale": unit.strength,
                    "start": unit.guidance_start,
                    "end": unit.guidance_end,
                }
                for unit, image in zip(units, control_images, strict=True)
            ],
            "ip_adapter": ip_adapter,
            "hires": _hires(body.hires_fix),
            "refiner": refiner,
            "output_format": extra.response_image_type,
        },
        sent=body.model_fields_set,
        wire_names={"steps": "steps", "guidance": "guidance_scale", "sampler": "sampler_name"},
    )


def refiner_for(settings: Settings, library: Catalog) -> str | None:
    """The refiner a novita request's ``refiner`` means: HUABU_REFINER_MODEL, else the
    library's only SDXL refiner. Blocking (reads the catalog)."""
    if settings.refiner_model:
        return settings.refiner_model
    refiners = [
        entry.name
        for entry in library.entries("checkpoints")
        if entry.architecture is Architecture.SDXL_REFINER
    ]
    return refiners[0] if len(refiners) == 1 else None


def _hires(fix: HiresFixIn | None) -> dict[str, Any] | None:
    if fix is None:
        return None
    return {
        "resize_width": fix.target_width,
        "resize_height": fix.target_height,
        "strength": fix.strength,
        "upscaler": fix.upscaler,
    }


def _ms(moment) -> int:
    return int(moment.timestamp() * 1000) if moment else 0


def from_native(record: TaskRecord, sign, ttl: int) -> dict[str, Any]:
    request = record.request
    assert isinstance(request, GenerationRequest)
    task: dict[str, Any] = {
        "task_id": str(record.id),
        "status": _STATUS[record.state],
        "reason": record.error or "",
        "task_type": "IMG_TO_IMG" if request.is_img2img else "TXT_TO_IMG",
        "eta": int(record.eta_seconds or 0),
        "progress_percent": int(record.percent),
    }
    return {
        "task": task,
        "images": [
            {
                "image_url": sign(image.key),
                "image_type": image.format,
                "image_url_ttl": ttl,
                "nsfw_detection_result": None,
            }
            for image in record.images
        ],
        "videos": [],
        "extra": {
            "seed": request.seed,
            "enable_nsfw_detection": False,
            "debug_info": {
                "request_info": "",
                "submit_time_ms": _ms(record.created_at),
                "execute_time_ms": _ms(record.started_at),
                "complete_time_ms": _ms(record.finished_at),
            },
        },
    }


def renamed(error: InvalidRequest) -> InvalidRequest:
    """Native field names → novita's, with the ``request.`` prefix of its body."""
    native = {
        "model": "model_name",
        "steps": "steps",
        "guidance": "guidance_scale",
        "sampler": "sampler_name",
        "n_images": "image_num",
        "vae": "sd_vae",
        "init_image": "image_base64",
        "loras": "loras",
        "width": "width",
        "height": "height",
        "seed": "seed",
        "embeddings": "embeddings",
        "controlnets": "controlnet.units",
        "ip_adapter": "ip_adapters.0",
        "hires": "hires_fix",
        "refiner": "refiner",
    }
    head, _, rest = (error.param or "").partition(".")
    if head not in native:
        return error
    if head == "embeddings" and rest:
        rest += ".name"  # native lists names; novita lists {model_name}
    if head == "refiner":  # novita names no refiner model: the server's is meant
        param = "request.refiner" + (".switch_at" if rest == "switch_at" else "")
        return InvalidRequest(f"{param}: {error.message}", param=param)
    if head == "hires":
        field = {
            "resize_width": "target_width",
            "resize_height": "target_height",
            "scale": "target_width",
        }.get(rest, rest)
        param = "request.hires_fix" + ("." + field if field else "")
        return InvalidRequest(f"{param}: {error.message}", param=param)
    if head == "ip_adapter":
        field = {"name": "model_name", "image": "image_base64"}.get(rest, rest)
        param = "request.ip_adapters.0" + ("." + field if field else "")
        return InvalidRequest(f"{param}: {error.message}", param=param)
    unit_fields = {
        "model": "model_name",
        "image": "image_base64",
        "scale": "strength",
        "start": "guidance_start",
        "end": "guidance_end",
    }
    if head == "controlnets" and rest:
        index, _, field = rest.partition(".")
        rest = index + ("." + unit_fields.get(field, field) if field else "")
    elif rest:
        rest = rest.replace("name", "model_name")
    param = "request." + native[head] + ("." + rest if rest else "")
    return InvalidRequest(f"{param}: {error.message}", param=param)


def prefixed(error: InvalidRequest) -> InvalidRequest:
    param = f"request.{error.param}" if error.param else "request"
    return InvalidRequest(error.message.replace(error.param or "\0", param, 1), param=param)
