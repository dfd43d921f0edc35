"""The ``api/v1b`` generation API of remagi.io and miaohua (specs 000 and 001, identical):
``get_token``, ``task_submit``, ``task_result``, ``get_generation_form``. Spec 001's training
routes are in ``v1b_training``.

The token travels in the JSON body. It is a login session from ``get_token`` (or a huabu API
key, which works too). ``init_img`` is a URL: huabu's own image links are read from storage,
others fetched with SSRF protection. Errors: ``{"code": <HTTP status>, "msg": ...,
"error_msg": ..., "param": ...}``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.auth import Principal
from huabu.dialects.common import Wire, read_body, upload_from_url, validate
from huabu.errors import AuthFailed, HuabuError, InvalidRequest
from huabu.native import MAX_SEED, GenerationRequest
from huabu.settings import Settings
from huabu.tasks.records import TaskRecord
from huabu.web.bodies import SMALL_BODY
from huabu.web.deps import FileUrl, ServicesDep
from huabu.web.openapi import ok, request_body
from huabu.web.routing import GuardedRoute
from huabu.web.services import Services

ORIGIN = "v1b"
PREFIX = "/api/v1b"
router = APIRouter(
    route_class=GuardedRoute, prefix=PREFIX, tags=["v1b: remagi / miaohua (specs 000, 001)"]
)

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×*]\s*(\d{1,5})\s*$")
#: The spec's recommended resolutions by aspect ratio; the form lists those this server allows.
_RESOLUTIONS = {
    "1:1": ["512x512", "640x640", "768x768", "1024x1024"],
    "2:3": ["512x768", "640x960", "768x1152", "1024x1536"],
    "3:2": ["768x512", "960x640", "1152x768", "1536x1024"],
}
_STATES = {"queued": "pending", "running": "pending", "succeeded": "done"}


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: str
    password: str


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    token: str = ""
    model_name: str = Field(min_length=1)
    prompt: str = Field(default="", max_length=16_000)
    neg_prompt: str = Field(default="", max_length=16_000)
    n_images: int = Field(default=2, ge=1)
    scale: float = Field(default=7, ge=1, le=20)
    select_seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    output_size: str = "512x512"
    init_img: str = ""


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    task_id: str = Field(min_length=1)


# -- pure translation -------------------------------------------------------------------------


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
        }
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


class ErrorOut(BaseModel):
    code: int = Field(description="The HTTP status.")
    msg: str
    error_msg: str
    param: str | None = Field(default=None, description="The field at fault (bad input only).")


class TokenOut(BaseModel):
    token: str


class SubmitOut(BaseModel):
    task_id: str


class ImageOut(BaseModel):
    large: str
    middle: str
    save_index: int
    share: bool
    shareable: bool


class ResultOut(BaseModel):
    state: Literal["pending", "done", "failed"]
    images: list[ImageOut]
    error_msg: str
    wait_time: int = Field(description="Tasks ahead of this one.")
    select_seed: int
    fav: bool


class FormOut(BaseModel):
    code: int
    info: list[dict[str, Any]]
    msg: str


def render_error(error: HuabuError, status: int) -> Response:
    body: dict[str, Any] = {"code": status, "msg": error.message, "error_msg": error.message}
    if isinstance(error, InvalidRequest):
        body["param"] = error.param
    return JSONResponse(body, status_code=status)


# -- routes -----------------------------------------------------------------------------------


async def caller(services: Services, token: str, request: Request) -> Principal:
    """The body's token, else an Authorization header, else anonymous (if allowed)."""
    if token.strip():
        return await run_in_threadpool(services.auth.for_token, token.strip())
    header = request.headers.get("authorization")
    if header or services.settings.anonymous:
        client = request.client.host if request.client else None
        return await run_in_threadpool(services.auth.principal, header, client)
    raise AuthFailed("token is required: get one from /api/v1b/get_token")


async def authenticated(
    services: Services, request: Request, schema: type[Wire]
) -> tuple[Principal, Wire]:
    """The caller (from the body's ``token``), then the body as ``schema``: a request without
    valid credentials is a 401 whatever else is wrong with it."""
    data = await read_body(request, limit=SMALL_BODY)  # read before the token is known: small
    token = data.get("token")
    user = await caller(services, token if isinstance(token, str) else "", request)
    return user, validate(schema, data)


@router.post(
    "/get_token",
    summary="Log in with email and password",
    openapi_extra=request_body(TokenIn),
    responses=ok(TokenOut),
)
async def get_token(request: Request, services: ServicesDep) -> Response:
    body = validate(TokenIn, await read_body(request, limit=SMALL_BODY))
    client = request.client.host if request.client else None
    user = await run_in_threadpool(services.auth.check_password, body.email, body.password, client)
    token, _ = await run_in_threadpool(
        services.accounts.create_session, user.id, services.settings.session_ttl
    )
    return JSONResponse({"token": token})


@router.post(
    "/task_submit",
    summary="Queue a t2i task, or i2i when init_img is given",
    openapi_extra=request_body(SubmitIn),
    responses=ok(SubmitOut),
)
async def task_submit(request: Request, services: ServicesDep) -> Response:
    user, body = await authenticated(services, request, SubmitIn)
    uploads = services.new_uploads()
    upload_id = None
    if body.init_img.strip():
        upload_id = await run_in_threadpool(
            upload_from_url, services, user.id, body.init_img, field="init_img", uploads=uploads
        )
    try:
        native = to_native(body, init_image=upload_id, settings=services.settings)
        record = await run_in_threadpool(
            services.submitter.submit_generation, user, native, origin=ORIGIN, uploads=uploads
        )
    except InvalidRequest as exc:
        raise renamed(exc) from None
    return JSONResponse({"task_id": str(record.id)})


@router.post(
    "/task_result",
    summary="A task's state and images",
    openapi_extra=request_body(ResultIn),
    responses=ok(ResultOut),
)
async def task_result(request: Request, services: ServicesDep, url: FileUrl) -> Response:
    user, body = await authenticated(services, request, ResultIn)
    record = await run_in_threadpool(services.tasks.get, user.id, body.task_id)
    return JSONResponse(from_native(record, url))


@router.get(
    "/get_generation_form",
    summary="Models, ranges and resolutions this server offers",
    responses=ok(FormOut),
)
async def get_generation_form(services: ServicesDep) -> Response:
    models = await run_in_threadpool(services.catalog.names, "checkpoints")
    default = await run_in_threadpool(services.catalog.default_model) if models else ""
    return JSONResponse(generation_form(services.settings, models, default))
