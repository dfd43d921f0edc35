"""kamiya's image API (spec 002) under ``/api/image``: config, generate (text2image and
image2image), one task by ``hashid``, and the caller's list. Every response, errors included,
is the envelope ``{"status": <code>, "message": ..., "data": ...}``.

Ids: ``metaid`` is the task's UUID in hex, ``hashid`` the same number in base 36 (what the
status endpoint takes), ``id`` the first 7 characters of the hashid. Images are JPEG, as
kamiya's ``metadata.jpg`` promises.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.dialects.common import read_body, validate
from huabu.errors import HuabuError, InvalidRequest, NotFound
from huabu.images import decode_base64
from huabu.native import MAX_LORAS, MAX_OFFSET, MAX_SEED, SAMPLER_NAMES, GenerationRequest
from huabu.tasks.records import TaskRecord
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import ok, request_body
from huabu.web.routing import GuardedRoute

ORIGIN = "kamiya"
PREFIX = "/api/image"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["kamiya (spec 002)"])

_STATUS = {
    "queued": "created",
    "running": "generating",
    "succeeded": "generated",
    "failed": "failed",
    "cancelled": "failed",
}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


class LoRA(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    weight: float = Field(ge=0, le=100)


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["text2image", "image2image"] = "text2image"
    prompts: str = Field(default="", max_length=16_000)
    negativePrompts: str = Field(default="", max_length=16_000)  # noqa: N815 - wire name
    step: int = Field(default=28, ge=1)
    cfg: float = Field(default=7, ge=0, le=30)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    sampling: str = "DPM++ 2M Karras"
    width: int = 512
    height: int = 512
    model: str | None = None
    LoRAs: list[LoRA] = Field(default_factory=list)  # noqa: N815
    image: str | None = None


# -- pure translation -------------------------------------------------------------------------


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
        }
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


def envelope(data: Any, status: int = 200, message: str = "OK") -> JSONResponse:
    return JSONResponse({"status": status, "message": message, "data": data}, status_code=status)


class ErrorOut(BaseModel):
    status: int = Field(description="The HTTP status.")
    message: str
    data: None = None


class LoRAOut(BaseModel):
    id: str
    weight: float


class MetadataOut(BaseModel):
    LoRAs: list[LoRAOut]  # noqa: N815 - wire name
    model: str
    width: int
    height: int
    type: Literal["text2image", "image2image"]
    prompts: str
    negativePrompts: str  # noqa: N815
    sampling: str
    step: int
    cfg: float
    seed: int
    batch: int
    artboard: str
    jpg: str | None = Field(default=None, description="The image; empty if it failed.")


class TaskOut(BaseModel):
    id: str
    hashid: str
    metaid: str
    status: Literal["created", "generating", "generated", "failed"]
    metadata: MetadataOut
    userId: str  # noqa: N815
    createdAt: str  # noqa: N815
    updatedAt: str  # noqa: N815
    error: str | None = None


class TaskEnvelope(BaseModel):
    status: int
    message: str
    data: TaskOut


class TasksEnvelope(BaseModel):
    status: int
    message: str
    data: list[TaskOut]


class Named(BaseModel):
    id: str
    name: str


class ConfigOut(BaseModel):
    models: list[Named]
    LoRAs: list[Named]  # noqa: N815
    samplings: list[str]
    artboards: list[str]
    limits: dict[str, dict[str, int]]


class ConfigEnvelope(BaseModel):
    status: int
    message: str
    data: ConfigOut


def render_error(error: HuabuError, status: int) -> Response:
    return envelope(None, status, error.message)


# -- routes -----------------------------------------------------------------------------------


@router.get(
    "/config", summary="Models, LoRAs, samplers, sizes and limits", responses=ok(ConfigEnvelope)
)
def config(user: CurrentUser, services: ServicesDep) -> Response:
    settings = services.settings
    catalog = services.catalog
    sizes = [
        (w, h)
        for w, h in ((512, 512), (768, 512), (512, 768), (1024, 1024), (1024, 576), (576, 1024))
        if w * h <= settings.max_pixels
    ]
    return envelope(
        {
            "models": [{"id": name, "name": name} for name in catalog.names("checkpoints")],
            "LoRAs": [{"id": name, "name": name} for name in catalog.names("loras")],
            "samplings": list(SAMPLER_NAMES),
            "artboards": [f"{w}x{h}" for w, h in sizes],
            "limits": {
                "width": {"min": settings.min_size, "max": settings.max_size, "multipleOf": 8},
                "height": {"min": settings.min_size, "max": settings.max_size, "multipleOf": 8},
                "pixels": {"max": settings.max_pixels},
                "step": {"min": 1, "max": settings.max_steps},
                "cfg": {"min": 0, "max": 30},
                "seed": {"min": -1, "max": MAX_SEED},
                "batch": {"min": 1, "max": 1},
            },
        }
    )


@router.post(
    "/generate",
    summary="Queue a text2image or image2image task",
    openapi_extra=request_body(GenerateIn),
    responses=ok(TaskEnvelope),
)
async def generate(
    request: Request, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> Response:
    body = validate(GenerateIn, await read_body(request))
    uploads = services.new_uploads()
    upload_id = None
    if body.type == "image2image":
        if not body.image:
            raise InvalidRequest("image: required when type is image2image", param="image")
        data = decode_base64(body.image, field="image")
        upload_id = (await run_in_threadpool(uploads.add, data, field="image")).id
    model = body.model
    if not model:
        model = await run_in_threadpool(services.catalog.default_model)
    try:
        native = to_native(body, model=model, init_image=upload_id)
        record = await run_in_threadpool(
            services.submitter.submit_generation, user, native, origin=ORIGIN, uploads=uploads
        )
    except InvalidRequest as exc:
        raise renamed(exc) from None
    return envelope(from_native(record, url))


@router.get("/generate/{hash_id}", summary="One task by hashid", responses=ok(TaskEnvelope))
def status(hash_id: str, user: CurrentUser, services: ServicesDep, url: FileUrl) -> Response:
    record = services.tasks.get(user.id, task_id_of(hash_id))
    return envelope(from_native(record, url))


@router.get(
    "/generate",
    summary="Your tasks, newest first (start is 1-based)",
    responses=ok(TasksEnvelope),
)
def list_tasks(
    user: CurrentUser,
    services: ServicesDep,
    url: FileUrl,
    start: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 1,
    take: int = 20,
) -> Response:
    if not 1 <= take <= 100:
        raise InvalidRequest(f"take must be between 1 and 100, got {take}", param="take")
    records, _ = services.tasks.list(user.id, limit=take, offset=max(0, start - 1), kind="generate")
    return envelope([from_native(record, url) for record in records])
