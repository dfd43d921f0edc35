"""novita's v3 async API (spec 003): ``POST /v3/async/txt2img``, ``POST /v3/async/img2img``,
``GET /v3/async/task-result?task_id=``, ``GET /v3/model``. Shapes as the official
``novita-client`` SDK reads them (``novita_client/proto.py``), so the SDK works against huabu by
changing only its ``base_url``. Errors: ``{"code", "reason", "message", "metadata"}``.

The refiner (``refiner.switch_at``) runs ``HUABU_REFINER_MODEL``, or the library's only SDXL
refiner. Not yet available here (refused with a 400 naming the field): hires_fix on img2img.
novita's model-based upscalers (RealESRGAN_x4plus_anime_6B, RealESRNet_x4plus) need weights this
server does not have and are refused by name.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.catalog.architectures import Architecture
from huabu.catalog.shared import Catalog
from huabu.dialects.common import read_body, validate
from huabu.errors import AuthFailed, HuabuError, InvalidRequest, NotFound, Overloaded, TooLarge
from huabu.images import decode_base64
from huabu.native import MAX_CONTROLNETS, MAX_LORAS, MAX_SEED, GenerationRequest
from huabu.settings import Settings
from huabu.tasks.records import TaskRecord
from huabu.tasks.uploads import NewUploads
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import ok, request_body, schema_of
from huabu.web.routing import GuardedRoute
from huabu.web.services import Services

ORIGIN = "novita"
PREFIX = "/v3"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["novita v3 (spec 003)"])

_STATUS = {
    "queued": "TASK_STATUS_QUEUED",
    "running": "TASK_STATUS_PROCESSING",
    "succeeded": "TASK_STATUS_SUCCEED",
    "failed": "TASK_STATUS_FAILED",
    "cancelled": "TASK_STATUS_FAILED",
}
#: Library kind → novita's model type name and display name.
_TYPES = {
    "checkpoints": ("checkpoint", "Checkpoint"),
    "loras": ("lora", "LoRA"),
    "vae": ("vae", "VAE"),
    "controlnet": ("controlnet", "ControlNet"),
    "embeddings": ("textualinversion", "Textual Inversion"),
    "ipadapter": ("ipadapter", "IP-Adapter"),
}
MAX_IMAGE_BYTES = 30 * 2**20  # spec 003
_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = Field(min_length=1)
    strength: float = Field(default=1.0, ge=-4, le=4)


class NamedIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = ""


class ControlUnitIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = Field(min_length=1)
    image_base64: str = Field(min_length=1)
    strength: float = Field(default=1.0, ge=0, le=2)
    preprocessor: str = "canny"
    guidance_start: float = Field(default=0.0, ge=0, le=1)
    guidance_end: float = Field(default=1.0, ge=0, le=1)


class ControlNetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    units: list[ControlUnitIn] = Field(default_factory=list, max_length=MAX_CONTROLNETS)


class Txt2ImgIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_name: str = Field(min_length=1)
    prompt: str = Field(min_length=1, max_length=1024)
    negative_prompt: str | None = Field(default=None, max_length=1024)
    width: int = Field(default=512, ge=128, le=2048)
    height: int = Field(default=512, ge=128, le=2048)
    image_num: int = Field(default=1, ge=1, le=8)
    steps: int = Field(default=20, ge=1, le=100)
    guidance_scale: float = Field(default=7.5, ge=1, le=30)
    sampler_name: str = "Euler a"
    seed: int | None = Field(default=-1, ge=-1, le=MAX_SEED)
    sd_vae: str | None = None
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    loras: list[LoraIn] | None = Field(default=None, max_length=MAX_LORAS)
    embeddings: list[NamedIn] | None = Field(default=None, max_length=5)
    hires_fix: HiresFixIn | None = None
    refiner: RefinerIn | None = None
    controlnet: ControlNetIn | None = None
    ip_adapters: list[IpAdapterIn] | None = Field(default=None, max_length=1)


class RefinerIn(BaseModel):
    """novita's ``refiner``: where the SDXL refiner takes over, as a fraction of the steps."""

    model_config = ConfigDict(extra="ignore")
    switch_at: float = Field(default=0.8, ge=0, le=1)


class HiresFixIn(BaseModel):
    """novita's ``hires_fix``: the final size, the second pass's strength, the upscaler."""

    model_config = ConfigDict(extra="ignore")
    target_width: int = Field(ge=128, le=4096)
    target_height: int = Field(ge=128, le=4096)
    strength: float = Field(default=0.5, gt=0, le=1)
    upscaler: str = "Latent"


class IpAdapterIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = Field(min_length=1)
    image_base64: str = Field(min_length=1)
    strength: float = Field(default=0.5, ge=0, le=2)


class Img2ImgIn(Txt2ImgIn):
    image_base64: str = Field(min_length=1)
    strength: float = Field(default=0.75, gt=0, le=1)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, max_length=2048)


class ExtraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    response_image_type: Literal["png", "webp", "jpeg"] = "png"
    #: Where the task's end is announced (signed as huabu's native webhooks are).
    webhook: WebhookIn | None = None


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")
    extra: ExtraIn | None = None
    request: dict[str, Any]


def _envelope_of(request: type[BaseModel]) -> dict[str, Any]:
    """The documented body: ``Envelope`` with its ``request`` described."""
    return {
        "type": "object",
        "required": ["request"],
        "properties": {"extra": schema_of(ExtraIn), "request": schema_of(request)},
    }


class SubmitOut(BaseModel):
    task_id: str


class TaskOut(BaseModel):
    task_id: str
    status: Literal[
        "TASK_STATUS_QUEUED",
        "TASK_STATUS_PROCESSING",
        "TASK_STATUS_SUCCEED",
        "TASK_STATUS_FAILED",
    ]
    reason: str
    task_type: Literal["TXT_TO_IMG", "IMG_TO_IMG"]
    eta: int
    progress_percent: int


class ImageOut(BaseModel):
    image_url: str
    image_type: str
    image_url_ttl: int
    nsfw_detection_result: None


class DebugInfo(BaseModel):
    request_info: str
    submit_time_ms: int
    execute_time_ms: int
    complete_time_ms: int


class ResultExtra(BaseModel):
    seed: int
    enable_nsfw_detection: bool
    debug_info: DebugInfo


class TaskResultOut(BaseModel):
    task: TaskOut
    images: list[ImageOut]
    videos: list[Any]
    extra: ResultExtra


class ModelType(BaseModel):
    name: str
    display_name: str


class ModelOut(BaseModel):
    id: int
    name: str
    sd_name: str
    sd_name_in_api: str
    type: ModelType
    status: int
    base_model: str
    source: str
    visibility: str
    is_nsfw: bool
    categories: list[str]
    download_url: str
    download_url_ttl: int
    cover_url: str
    hash_sha256: str


class Pagination(BaseModel):
    next_cursor: str


class ModelsOut(BaseModel):
    models: list[ModelOut]
    pagination: Pagination


# -- pure translation -------------------------------------------------------------------------


def _unsupported(body: Txt2ImgIn) -> None:
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
    _unsupported(body)
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
        }
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


async def _refiner(body: Txt2ImgIn, services: Services) -> str | None:
    """``refiner_for``, read only for a request that asks for the refiner."""
    if body.refiner is None:
        return None
    return await run_in_threadpool(refiner_for, services.settings, services.catalog)


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


_REASONS = (
    (TooLarge, "REQUEST_TOO_LARGE"),
    (InvalidRequest, "INVALID_REQUEST_BODY"),
    (AuthFailed, "INVALID_API_KEY"),
    (NotFound, "NOT_FOUND"),
    (Overloaded, "RATE_LIMIT_EXCEEDED"),
)


class ErrorOut(BaseModel):
    code: int = Field(description="The HTTP status.")
    reason: str = Field(description="INVALID_REQUEST_BODY, INVALID_API_KEY, NOT_FOUND, …")
    message: str
    metadata: dict[str, str | None] = Field(description="`param`: the field at fault.")


def render_error(error: HuabuError, status: int) -> Response:
    reason = next((name for kind, name in _REASONS if isinstance(error, kind)), "INTERNAL_ERROR")
    metadata = {"param": error.param} if isinstance(error, InvalidRequest) else {}
    return JSONResponse(
        {"code": status, "reason": reason, "message": error.message, "metadata": metadata},
        status_code=status,
    )


def _renamed(error: InvalidRequest) -> InvalidRequest:
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


# -- routes -----------------------------------------------------------------------------------


async def _envelope(request: Request) -> tuple[dict[str, Any], ExtraIn]:
    envelope = validate(Envelope, await read_body(request))
    return envelope.request, envelope.extra or ExtraIn()


def _prefixed(error: InvalidRequest) -> InvalidRequest:
    param = f"request.{error.param}" if error.param else "request"
    return InvalidRequest(error.message.replace(error.param or "\0", param, 1), param=param)


async def _submit(
    native: GenerationRequest, extra: ExtraIn, user, services, uploads=None
) -> Response:
    webhook = extra.webhook.url if extra.webhook is not None else None
    try:
        record = await run_in_threadpool(
            partial(
                services.submitter.submit_generation,
                user,
                native,
                origin=ORIGIN,
                uploads=uploads,
                webhook_url=webhook,
                webhook_field="extra.webhook.url",
            )
        )
    except InvalidRequest as exc:
        raise _renamed(exc) from None
    return JSONResponse({"task_id": str(record.id)})


@router.post(
    "/async/txt2img",
    summary="Queue a text-to-image task",
    openapi_extra=request_body(_envelope_of(Txt2ImgIn)),
    responses=ok(SubmitOut),
)
async def txt2img(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    body, extra = await _envelope(request)
    try:
        parsed = validate(Txt2ImgIn, body)
    except InvalidRequest as exc:
        raise _prefixed(exc) from None
    uploads = services.new_uploads()
    control_images, ip_image = await _adapter_images(parsed, uploads)
    try:
        native = to_native(
            parsed,
            extra,
            control_images=control_images,
            ip_image=ip_image,
            refiner_model=await _refiner(parsed, services),
        )
    except InvalidRequest as exc:
        raise _renamed(exc) from None
    return await _submit(native, extra, user, services, uploads)


async def _adapter_images(
    parsed: Txt2ImgIn, uploads: NewUploads
) -> tuple[tuple[uuid.UUID, ...], uuid.UUID | None]:
    """The ControlNet units' images and the IP-Adapter's, checked one at a time."""
    control_images = []
    for index, unit in enumerate(parsed.controlnet.units if parsed.controlnet else []):
        field = f"request.controlnet.units.{index}.image_base64"
        data = decode_base64(unit.image_base64, field=field)
        control_images.append((await run_in_threadpool(uploads.add, data, field=field)).id)
    ip_image = None
    if parsed.ip_adapters:
        field = "request.ip_adapters.0.image_base64"
        data = decode_base64(parsed.ip_adapters[0].image_base64, field=field)
        ip_image = (await run_in_threadpool(uploads.add, data, field=field)).id
    return tuple(control_images), ip_image


@router.post(
    "/async/img2img",
    summary="Queue an image-to-image task",
    openapi_extra=request_body(_envelope_of(Img2ImgIn)),
    responses=ok(SubmitOut),
)
async def img2img(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    body, extra = await _envelope(request)
    try:
        parsed = validate(Img2ImgIn, body)
    except InvalidRequest as exc:
        raise _prefixed(exc) from None
    _unsupported(parsed)
    data = decode_base64(parsed.image_base64, field="request.image_base64")
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidRequest(
            f"request.image_base64: the image is {len(data)} bytes; the limit is 30 MB",
            param="request.image_base64",
        )
    uploads = services.new_uploads()
    upload = await run_in_threadpool(uploads.add, data, field="request.image_base64")
    if max(upload.width, upload.height) > 2048:
        raise InvalidRequest(
            f"request.image_base64: {upload.width}×{upload.height} is over 2048 pixels a side",
            param="request.image_base64",
        )
    control_images, ip_image = await _adapter_images(parsed, uploads)
    try:
        native = to_native(
            parsed,
            extra,
            init_image=upload.id,
            control_images=control_images,
            ip_image=ip_image,
            refiner_model=await _refiner(parsed, services),
        )
    except InvalidRequest as exc:
        raise _renamed(exc) from None
    return await _submit(native, extra, user, services, uploads)


@router.get(
    "/async/task-result",
    summary="A task's status, progress and images",
    responses=ok(TaskResultOut),
)
def task_result(
    user: CurrentUser, services: ServicesDep, url: FileUrl, task_id: str = Query("")
) -> Response:
    if not task_id:
        raise InvalidRequest("task_id is required", param="task_id")
    record = services.tasks.get(user.id, task_id)
    return JSONResponse(from_native(record, url, services.settings.url_ttl))


@router.get(
    "/model",
    summary="Models by type (checkpoint, lora, vae, controlnet, …)",
    responses=ok(ModelsOut),
)
def models(
    user: CurrentUser,
    services: ServicesDep,
    types: str | None = Query(None, alias="filter.types"),
    type_: str | None = Query(None, alias="filter.type"),
    is_sdxl: bool | None = Query(None, alias="filter.is_sdxl"),
    visibility: str | None = Query(None, alias="filter.visibility"),
    cursor: str = Query("c_0", alias="pagination.cursor"),
    limit: int = Query(100, alias="pagination.limit", ge=1, le=100),
) -> Response:
    wanted = {t.strip() for t in (types or type_ or "").split(",") if t.strip()}
    unknown = wanted - {name for name, _ in _TYPES.values()}
    if unknown:
        raise InvalidRequest(
            f"filter.types: unknown type {sorted(unknown)[0]!r}; "
            f"known: {', '.join(name for name, _ in _TYPES.values())}",
            param="filter.types",
        )
    try:
        offset = int(cursor.removeprefix("c_") or 0)
    except ValueError:
        raise InvalidRequest(
            "pagination.cursor is not one this server handed out", param="pagination.cursor"
        ) from None
    found: list[dict[str, Any]] = []
    if visibility in (None, "public"):  # a self-hosted library has no private models
        for kind, (type_name, display) in _TYPES.items():
            if wanted and type_name not in wanted:
                continue
            for entry in services.catalog.entries(kind):
                sdxl = entry.architecture is not None and entry.architecture.is_sdxl
                if is_sdxl is not None and sdxl != is_sdxl:
                    continue
                found.append(
                    {
                        "id": len(found) + 1,
                        "name": entry.name,
                        "sd_name": entry.name,
                        "sd_name_in_api": entry.name,
                        "type": {"name": type_name, "display_name": display},
                        "status": 1,
                        "base_model": (entry.architecture.label if entry.architecture else ""),
                        "source": "local",
                        "visibility": "public",
                        "is_nsfw": False,
                        "categories": [],
                        "download_url": "",
                        "download_url_ttl": 0,
                        "cover_url": "",
                        "hash_sha256": "",
                    }
                )
    page = found[offset : offset + limit]
    more = offset + limit < len(found)
    return JSONResponse(
        {"models": page, "pagination": {"next_cursor": f"c_{offset + limit}" if more else ""}}
    )
