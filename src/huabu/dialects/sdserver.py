"""The plain "Stable Diffusion API Server" (spec 004): synchronous ``POST /txt2img`` and
``POST /img2img``; form-urlencoded bodies (JSON accepted too); the answer comes once the
images exist: ``{"images": [{"image_url", "mime_type", "seed"}], "status": "success"}``.

The spec names no model: requests use the server's default checkpoint (HUABU_DEFAULT_MODEL).
"""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.dialects.common import read_body, validate
from huabu.errors import Cancelled, HuabuError, InvalidRequest, TaskFailed, TaskTimedOut
from huabu.images import decode_base64
from huabu.native import MAX_SEED, GenerationRequest
from huabu.storage import content_type
from huabu.tasks.records import TaskRecord
from huabu.tasks.uploads import NewUploads
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import FORM, JSON, MULTIPART, SYNC, request_body
from huabu.web.routing import GuardedRoute
from huabu.web.services import Services
from huabu.web.waiting import submit_and_wait

ORIGIN = "sdserver"
PATHS = ("/txt2img", "/img2img")
router = APIRouter(route_class=GuardedRoute, tags=["Stable Diffusion API Server (spec 004)"])


class Txt2ImgForm(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(default="", max_length=16_000)
    negative_prompt: str = Field(default="", max_length=16_000)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    num_outputs: int = Field(default=1, ge=1, le=4)
    width: int = Field(default=512, gt=0, le=1024)
    height: int = Field(default=512, gt=0, le=1024)
    num_inference_steps: int = Field(default=30, gt=0, le=150)
    guidance_scale: float = Field(default=7.0, gt=0, le=20)


class Img2ImgForm(Txt2ImgForm):
    init_image: str
    strength: float = Field(default=0.7, gt=0, lt=1)
    #: Unlike txt2img, the size defaults to the source image's (rounded down to a multiple of 8).
    width: int | None = Field(default=None, gt=0, le=1024)  # type: ignore[assignment]
    height: int | None = Field(default=None, gt=0, le=1024)  # type: ignore[assignment]


class ImageOut(BaseModel):
    image_url: str
    mime_type: str
    seed: int


class ImagesOut(BaseModel):
    images: list[ImageOut]
    status: str = "success"


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
        }
    )


def from_native(record: TaskRecord, sign) -> ImagesOut:
    return ImagesOut(
        images=[
            ImageOut(image_url=sign(image.key), mime_type=content_type(image.key), seed=image.seed)
            for image in record.images
        ]
    )


class ErrorOut(BaseModel):
    status: Literal["error", "failed", "timeout"]
    message: str
    param: str | None = Field(default=None, description="The field at fault (bad input only).")
    task_id: str | None = Field(default=None, description="The task, once one was queued.")


def render_error(error: HuabuError, status: int) -> Response:
    kind = "error"
    if isinstance(error, TaskFailed | Cancelled):
        kind = "failed"
    elif isinstance(error, TaskTimedOut):
        kind = "timeout"
    body: dict[str, object] = {"status": kind, "message": error.message}
    if isinstance(error, InvalidRequest):
        body["param"] = error.param
    if error.task_id is not None:
        body["task_id"] = error.task_id
    return JSONResponse(body, status_code=status)


async def _run(
    request: GenerationRequest, user, services: Services, url, uploads: NewUploads | None = None
) -> Response:
    record = await submit_and_wait(services, user, request, origin=ORIGIN, uploads=uploads)
    return JSONResponse(from_native(record, url).model_dump())


def _round8(value: int) -> int:
    return max(8, value - value % 8)


@router.post(
    "/txt2img",
    response_model=ImagesOut,
    summary="Text to image (synchronous)",
    openapi_extra=request_body(Txt2ImgForm, FORM, MULTIPART, JSON) | SYNC,
)
async def txt2img(
    request: Request, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> Response:
    form = validate(Txt2ImgForm, await read_body(request))
    model = await run_in_threadpool(services.catalog.default_model)
    native = to_native(form, model=model, size=(form.width, form.height))
    return await _run(native, user, services, url)


@router.post(
    "/img2img",
    response_model=ImagesOut,
    summary="Image to image (synchronous)",
    openapi_extra=request_body(Img2ImgForm, FORM, MULTIPART, JSON) | SYNC,
)
async def img2img(
    request: Request, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> Response:
    form = validate(Img2ImgForm, await read_body(request))
    data = decode_base64(form.init_image, field="init_image")
    uploads = services.new_uploads()
    upload = await run_in_threadpool(uploads.add, data, field="init_image")
    size = (
        form.width or min(1024, _round8(upload.width)),
        form.height or min(1024, _round8(upload.height)),
    )
    model = await run_in_threadpool(services.catalog.default_model)
    native = to_native(form, model=model, init_image=upload.id, size=size)
    return await _run(native, user, services, url, uploads)
