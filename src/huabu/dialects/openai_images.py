"""The OpenAI images API, for clients configured with ``base_url=http://HOST:PORT/v1``:
``images/generations``, ``images/edits`` (image-to-image, or inpainting with a mask),
``images/variations``, and ``models``. Synchronous like OpenAI's; errors in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``.

OpenAI's model names (``dall-e-2``, ``dall-e-3``, ``gpt-image-…``) mean the server's default
checkpoint; any checkpoint's name (or one's own trained model's) picks that one. ``quality``
sets the number of steps; ``style`` is accepted and has no effect.
"""

from __future__ import annotations

import base64
import io
import re
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from huabu.catalog.architectures import native_size
from huabu.catalog.library import ModelInfo
from huabu.dialects.common import read_body, validate
from huabu.errors import AuthFailed, HuabuError, InvalidRequest, NotFound, Overloaded
from huabu.images import alpha_mask
from huabu.native import GenerationRequest
from huabu.settings import Settings
from huabu.tasks.uploads import NewUploads
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import MULTIPART, SYNC, ok, request_body
from huabu.web.routing import GuardedRoute
from huabu.web.services import Services
from huabu.web.waiting import submit_and_wait

ORIGIN = "openai"
PREFIX = "/v1"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["OpenAI images"])

_SIZE = re.compile(r"^\s*(\d{1,5})x(\d{1,5})\s*$")
#: OpenAI's quality levels → sampling steps.
_STEPS = {"low": 12, "auto": 25, "standard": 25, "medium": 25, "high": 40, "hd": 40}
_OPENAI_MODELS = ("dall-e-", "gpt-image-")


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, requests or server_error")
    param: str | None
    code: str | None


class ErrorOut(BaseModel):
    error: ErrorDetail


def render_error(error: HuabuError, status: int) -> Response:
    kind, code = "invalid_request_error", None
    if isinstance(error, AuthFailed):
        code = "invalid_api_key"
    elif isinstance(error, Overloaded):
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    param = error.param if isinstance(error, InvalidRequest) else None
    message = error.message
    if error.task_id is not None and error.task_id not in message:
        message = f"{message} (task {error.task_id})"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class GenerationIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] = "auto"
    style: str | None = None
    stream: bool = False


class EditIn(GenerationIn):
    prompt: str = Field(default="", max_length=32_000)


class EditForm(EditIn):
    """The multipart body of edits and variations (documentation; read by ``_form``)."""

    image: bytes = Field(description="The image to change (`image[]` is accepted too)")
    mask: bytes | None = Field(default=None, description="Edits: transparent pixels = change")


class ImageOut(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class ImagesOut(BaseModel):
    created: int
    data: list[ImageOut]
    output_format: str
    size: str
    quality: str


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelsOut(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


# -- translation ------------------------------------------------------------------------------


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
    if body.stream:
        raise InvalidRequest("stream: streaming partial images is not supported", param="stream")
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
        }
    )


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


# -- routes -----------------------------------------------------------------------------------


def _resolve_model(services: Services, name: str | None) -> tuple[str, tuple[int, int]]:
    """The checkpoint a request means (OpenAI's own model names, and none, mean the server's
    default), and its native size. Blocking (reads the library)."""
    if not name or name.startswith(_OPENAI_MODELS):
        model = services.catalog.default_model()
    else:
        model = name
    entries = {entry.name: entry for entry in services.catalog.entries("checkpoints")}
    entry = entries.get(model)
    return model, native_square(entry)


async def _generate(
    services: Services,
    user,
    body: GenerationIn,
    url,
    uploads: NewUploads | None = None,
    source_size: tuple[int, int] | None = None,
    **image,
) -> Response:
    model, auto_size = await run_in_threadpool(_resolve_model, services, body.model)
    try:
        native = to_native(
            body,
            model=model,
            auto_size=source_size or auto_size,
            settings=services.settings,
            **image,
        )
        record = await submit_and_wait(services, user, native, origin=ORIGIN, uploads=uploads)
    except InvalidRequest as exc:
        raise renamed(exc) from None
    b64 = body.response_format == "b64_json" or (
        body.response_format is None and (body.model or "").startswith("gpt-image-")
    )
    if b64:
        data = await run_in_threadpool(
            lambda: [
                {"b64_json": base64.b64encode(services.storage.get(i.key)).decode()}
                for i in record.images
            ]
        )
    else:
        data = [{"url": url(image.key)} for image in record.images]
    return JSONResponse(
        {
            "created": int(record.created_at.timestamp()),
            "data": data,
            "output_format": native.output_format,
            "size": f"{native.width}x{native.height}",
            "quality": body.quality,
        }
    )


async def _form(request: Request) -> tuple[dict[str, Any], UploadFile | None, UploadFile | None]:
    """A multipart body: its text fields, its (first) image, its mask."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("send the image as multipart/form-data", param="image")
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    images = [item for key in ("image", "image[]") for item in form.getlist(key)]
    image = next((item for item in images if isinstance(item, UploadFile)), None)
    mask = form.get("mask")
    return fields, image, mask if isinstance(mask, UploadFile) else None


async def _mask(
    uploads: NewUploads, settings: Settings, mask: bytes | None, image: bytes, size
) -> uuid.UUID | None:
    """The upload id of the inpainting mask (white = repaint) made from the mask's fully
    transparent pixels or, with no mask, from the image's own (as DALL·E 2 edits do); None
    for an image-to-image edit of an image with no transparency."""
    limit = settings.max_input_pixels
    if mask is None:
        made = await run_in_threadpool(alpha_mask, image, field="image", max_pixels=limit)
        if made is None:
            return None
    else:
        made = await run_in_threadpool(alpha_mask, mask, field="mask", max_pixels=limit)
        if made is None:
            raise InvalidRequest(
                "mask: its fully transparent pixels mark where to edit, and it has none",
                param="mask",
            )
        if made.size != size:
            raise InvalidRequest(
                f"mask must have the image's size {size[0]}x{size[1]}, got "
                f"{made.width}x{made.height}",
                param="mask",
            )
    buffer = io.BytesIO()
    made.save(buffer, format="PNG")
    return (await run_in_threadpool(uploads.add, buffer.getvalue(), field="mask")).id


def _fitted(width: int, height: int, services: Services) -> tuple[int, int]:
    """An input image's size as an output size: multiples of 8 within the limits."""
    settings = services.settings
    scale = min(
        1.0, settings.max_size / max(width, height), (settings.max_pixels / (width * height)) ** 0.5
    )

    def fit(side: int) -> int:
        return max(settings.min_size, int(side * scale) // 8 * 8)

    return fit(width), fit(height)


@router.post(
    "/images/generations",
    summary="Create images from a prompt",
    openapi_extra=request_body(GenerationIn) | SYNC,
    responses=ok(ImagesOut),
)
async def generations(
    request: Request, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> Response:
    body = validate(GenerationIn, await read_body(request))
    return await _generate(services, user, body, url)


async def _from_image(
    request: Request, user, services: Services, url, *, strength: float, edit: bool
) -> Response:
    """Edits and variations: image-to-image from the multipart ``image``, at its size unless
    ``size`` says otherwise. An edit needs a prompt; with a mask (or transparency in the image)
    it repaints only the transparent area. Variations have no mask in OpenAI's API."""
    fields, image, mask_file = await _form(request)
    body = validate(EditIn, fields)
    if edit and not body.prompt:
        raise InvalidRequest("prompt is required", param="prompt")
    if image is None:
        raise InvalidRequest("image is required: send it as a file", param="image")
    data = await image.read()
    uploads = services.new_uploads()
    upload = await run_in_threadpool(uploads.add, data, field="image")
    mask = None
    if edit:
        mask_data = await mask_file.read() if mask_file is not None else None
        mask = await _mask(
            uploads, services.settings, mask_data, data, (upload.width, upload.height)
        )
    size = _fitted(upload.width, upload.height, services)
    return await _generate(
        services,
        user,
        body,
        url,
        uploads,
        source_size=size,
        init_image=upload.id,
        strength=1.0 if mask else strength,
        mask=mask,
    )


@router.post(
    "/images/edits",
    summary="Change an image by a prompt (image-to-image)",
    openapi_extra=request_body(EditForm, MULTIPART) | SYNC,
    responses=ok(ImagesOut),
)
async def edits(
    request: Request, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> Response:
    return await _from_image(request, user, services, url, strength=0.75, edit=True)


@router.post(
    "/images/variations",
    summary="Variations of an image",
    openapi_extra=request_body(EditForm, MULTIPART) | SYNC,
    responses=ok(ImagesOut),
)
async def variations(
    request: Request, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> Response:
    return await _from_image(request, user, services, url, strength=0.5, edit=False)


def _model_out(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "huabu"}


def _models(services: Services, user) -> list[dict[str, Any]]:
    """Checkpoints and the caller's trained models. Blocking."""
    entries = services.catalog.entries("checkpoints")
    trained = services.training.trained_names(user.id)
    now = time.time()
    listed = [_model_out(e.name, e.modified) for e in entries]
    return listed + [_model_out(name, now) for name in trained]


@router.get(
    "/models", summary="Models (checkpoints, and your trained ones)", responses=ok(ModelsOut)
)
async def models(user: CurrentUser, services: ServicesDep) -> Response:
    return JSONResponse(
        {"object": "list", "data": await run_in_threadpool(_models, services, user)}
    )


@router.get("/models/{model_id}", summary="One model", responses=ok(ModelOut))
async def model(model_id: str, user: CurrentUser, services: ServicesDep) -> Response:
    for item in await run_in_threadpool(_models, services, user):
        if item["id"] == model_id:
            return JSONResponse(item)
    raise NotFound(f"The model '{model_id}' does not exist")
