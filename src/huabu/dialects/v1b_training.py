"""Spec 001's training routes of the ``api/v1b`` dialect: ``upload_imgs``, ``dataset``,
``dataset_all``, ``train_submit``, ``train_progress``, ``get_train_form``.

Uploaded images come back as huabu's signed links; a dataset takes such links (or any image
URL, fetched with SSRF protection). A trained model is used by its name as ``model_name`` in
``task_submit`` (its base model, its LoRA and its trigger word) and, in every dialect, as a
LoRA. Beyond the spec, ``train_submit`` takes ``steps``, ``rank``, ``learning_rate``,
``resolution`` and ``seed``; a training is cancelled through the native API.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import UploadFile

from huabu.dialects.common import upload_from_url, validate
from huabu.dialects.v1b import ORIGIN, PREFIX, authenticated, caller
from huabu.errors import InvalidRequest
from huabu.native import MAX_OFFSET
from huabu.native.generation import Text
from huabu.native.training import MAIN_BODIES, RowId, TrainingPlan, TrainingRequest
from huabu.tasks.records import TaskRecord
from huabu.training.service import DatasetRecord
from huabu.web.deps import FileUrl, ServicesDep
from huabu.web.openapi import MULTIPART, ok, request_body
from huabu.web.routing import GuardedRoute

router = APIRouter(
    route_class=GuardedRoute, prefix=PREFIX, tags=["v1b: remagi / miaohua (specs 000, 001)"]
)

#: ``base_model`` values that mean "let the server choose" (the spec's default is 自动选择).
_AUTOMATIC = {"", "自动选择", "auto", "automatic"}
_STATES = {"queued": "pending", "running": "running", "succeeded": "done"}


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    name: Text = Field(min_length=1, max_length=200)
    description: Text = Field(default="", max_length=4000)
    images: list[str] = Field(min_length=1)


class DatasetAllIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    page: int = Field(default=1, ge=1, le=MAX_OFFSET)
    per_page: int = Field(default=20, ge=1, le=100)


class TrainSubmitIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=4000)
    base_model: str = ""
    trigger_word: str = Field(default="", max_length=200)
    main_body: str = "Style"
    nsfw: int = Field(default=0, ge=0, le=1)
    dataset: list[RowId] = Field(min_length=1, max_length=50)
    steps: int | None = Field(default=None, ge=1)
    rank: int | None = Field(default=None, ge=1, le=128)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    resolution: int | None = Field(default=None, ge=64, le=2048)
    seed: int = -1


class TrainProgressIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    task_id: str = Field(min_length=1)


# -- pure translation -------------------------------------------------------------------------


def to_native(body: TrainSubmitIn) -> TrainingRequest:
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


class UploadImgsIn(BaseModel):
    init_img: list[bytes] = Field(description="The image files (one part each).")
    token: str = ""


class Ok(BaseModel):
    code: int = Field(description="0")
    msg: str


class UrlsOk(Ok):
    info: list[str] = Field(description="The images' links, in the order sent.")


class DatasetId(BaseModel):
    dataset_id: int


class DatasetOk(Ok):
    info: DatasetId


class DatasetOut(BaseModel):
    id: int
    name: str
    description: str
    demo_picture: str
    create_time: str
    update_time: str
    images: list[str]
    images_num: int


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    page: int
    per_page: int
    has_next: bool
    has_prev: bool
    totalPages: int  # noqa: N815 - wire name


class TaskId(BaseModel):
    task_id: str


class TrainOk(Ok):
    info: TaskId


class ProgressOut(BaseModel):
    create_time: str
    description: str
    main_body: str
    model_name: str
    state: str = Field(description="pending, running, done, failed or cancelled")
    training_progress: float
    trigger_word: str
    base_model: str
    error_msg: str


class TrainForm(BaseModel):
    base_model: list[str]
    main_body: list[str]


class TrainFormOk(Ok):
    info: TrainForm


def renamed(error: InvalidRequest) -> InvalidRequest:
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
        "state": _STATES.get(record.state, record.state),
        "training_progress": 1.0 if done else round(record.step / max(record.total, 1), 4),
        "trigger_word": plan.trigger_word,
        "base_model": plan.base_model,
        "error_msg": record.error or "" if record.state in ("failed", "cancelled") else "",
    }


def _ok(info: Any) -> JSONResponse:
    return JSONResponse({"code": 0, "info": info, "msg": ""})


# -- routes -----------------------------------------------------------------------------------


@router.post(
    "/upload_imgs",
    summary="Upload images (multipart, several `init_img` files)",
    openapi_extra=request_body(UploadImgsIn, MULTIPART),
    responses=ok(UrlsOk),
)
async def upload_imgs(request: Request, services: ServicesDep, url: FileUrl) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest(
            "init_img: send the images as multipart/form-data files named init_img",
            param="init_img",
        )
    form = await request.form(max_files=services.settings.max_dataset_images + 1)
    token = form.get("token") or ""
    if isinstance(token, UploadFile):  # the spec's client sends the token as a file part
        token = (await token.read(4096)).decode("utf-8", "replace")
    files = form.getlist("init_img")
    if not files:
        raise InvalidRequest("init_img: send at least one image file", param="init_img")
    images = [item for item in files if isinstance(item, UploadFile)]
    if len(images) != len(files):
        raise InvalidRequest("init_img: each init_img must be a file", param="init_img")
    user = await caller(services, token, request)
    data = [await item.read() for item in images]
    records = await run_in_threadpool(services.uploads.upload_many, user.id, data, field="init_img")
    return _ok([url(record.key) for record in records])


@router.post(
    "/dataset",
    summary="Create a dataset from image URLs",
    openapi_extra=request_body(DatasetIn),
    responses=ok(DatasetOk),
)
async def dataset(request: Request, services: ServicesDep) -> Response:
    user, body = await authenticated(services, request, DatasetIn)
    uploads = services.new_uploads()
    images = [
        await run_in_threadpool(
            upload_from_url, services, user.id, image, field=f"images.{index}", uploads=uploads
        )
        for index, image in enumerate(body.images)
    ]
    record = await run_in_threadpool(
        services.training.create_dataset, user.id, body.name, body.description, images, uploads
    )
    return _ok({"dataset_id": record.id})


@router.post(
    "/dataset_all",
    summary="Your datasets, a page at a time",
    openapi_extra=request_body(DatasetAllIn),
    responses=ok(DatasetPage),
)
async def dataset_all(request: Request, services: ServicesDep, url: FileUrl) -> Response:
    user, body = await authenticated(services, request, DatasetAllIn)
    records, total = await run_in_threadpool(
        services.training.datasets, user.id, page=body.page, per_page=body.per_page
    )
    pages = math.ceil(total / body.per_page)
    return JSONResponse(
        {
            "items": [dataset_out(record, url) for record in records],
            "page": body.page,
            "per_page": body.per_page,
            "has_next": body.page < pages,
            "has_prev": body.page > 1,
            "totalPages": pages,
        }
    )


@router.post(
    "/train_submit",
    summary="Queue a LoRA training on your datasets",
    openapi_extra=request_body(TrainSubmitIn),
    responses=ok(TrainOk),
)
async def train_submit(request: Request, services: ServicesDep) -> Response:
    user, body = await authenticated(services, request, TrainSubmitIn)
    try:
        native = to_native(body)
        record = await run_in_threadpool(services.training.submit, user, native, origin=ORIGIN)
    except InvalidRequest as exc:
        raise renamed(exc) from None
    return _ok({"task_id": str(record.id)})


@router.post(
    "/train_progress",
    summary="A training's state and progress (0 to 1)",
    openapi_extra=request_body(TrainProgressIn),
    responses=ok(ProgressOut),
)
async def train_progress(request: Request, services: ServicesDep) -> Response:
    user, body = await authenticated(services, request, TrainProgressIn)
    record = await run_in_threadpool(services.training.progress, user.id, body.task_id)
    return JSONResponse(progress_out(record))


@router.get(
    "/get_train_form",
    summary="Base models and main_body choices for training",
    responses=ok(TrainFormOk),
)
async def get_train_form(services: ServicesDep) -> Response:
    bases = await run_in_threadpool(services.training.base_models)
    return _ok({"base_model": bases, "main_body": list(MAIN_BODIES)})
