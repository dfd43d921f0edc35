"""The routes of remagi/miaohua's v1b API (specs 000, 001): thin; read the body, translate, submit
or read through the task service, answer."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from huabu.auth import Principal
from huabu.dialects.common import Wire, read_body, upload_from_url, validate
from huabu.dialects.v1b.translate import (
    dataset_out,
    from_native,
    generation_form,
    progress_out,
    renamed,
    to_native,
    training_renamed,
    training_to_native,
)
from huabu.dialects.v1b.wire import (
    ORIGIN,
    PREFIX,
    DatasetAllIn,
    DatasetIn,
    DatasetOk,
    DatasetPage,
    ErrorOut,
    FormOut,
    ProgressOut,
    ResultIn,
    ResultOut,
    SubmitIn,
    SubmitOut,
    TokenIn,
    TokenOut,
    TrainFormOk,
    TrainOk,
    TrainProgressIn,
    TrainSubmitIn,
    UploadImgsIn,
    UrlsOk,
    render_error,
    success,
)
from huabu.errors import AuthFailed, InvalidRequest
from huabu.native.training import MAIN_BODIES
from huabu.web.bodies import SMALL_BODY
from huabu.web.deps import FileUrl, ServicesDep
from huabu.web.openapi import MULTIPART, ok, request_body
from huabu.web.routing import GuardedRoute, Mount
from huabu.web.services import Services

router = APIRouter(
    route_class=GuardedRoute, prefix=PREFIX, tags=["v1b: remagi / miaohua (specs 000, 001)"]
)


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
def get_generation_form(services: ServicesDep) -> Response:
    models = services.catalog.names("checkpoints")
    default = services.catalog.default_model() if models else ""
    return JSONResponse(generation_form(services.settings, models, default))


training_router = APIRouter(
    route_class=GuardedRoute, prefix=PREFIX, tags=["v1b: remagi / miaohua (specs 000, 001)"]
)


@training_router.post(
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
    return success([url(record.key) for record in records])


@training_router.post(
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
    return success({"dataset_id": record.id})


@training_router.post(
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


@training_router.post(
    "/train_submit",
    summary="Queue a LoRA training on your datasets",
    openapi_extra=request_body(TrainSubmitIn),
    responses=ok(TrainOk),
)
async def train_submit(request: Request, services: ServicesDep) -> Response:
    user, body = await authenticated(services, request, TrainSubmitIn)
    try:
        native = training_to_native(body)
        record = await run_in_threadpool(services.training.submit, user, native, origin=ORIGIN)
    except InvalidRequest as exc:
        raise training_renamed(exc) from None
    return success({"task_id": str(record.id)})


@training_router.post(
    "/train_progress",
    summary="A training's state and progress (0 to 1)",
    openapi_extra=request_body(TrainProgressIn),
    responses=ok(ProgressOut),
)
async def train_progress(request: Request, services: ServicesDep) -> Response:
    user, body = await authenticated(services, request, TrainProgressIn)
    record = await run_in_threadpool(services.training.progress, user.id, body.task_id)
    return JSONResponse(progress_out(record))


@training_router.get(
    "/get_train_form",
    summary="Base models and main_body choices for training",
    responses=ok(TrainFormOk),
)
def get_train_form(services: ServicesDep) -> Response:
    bases = services.training.base_models()
    return success({"base_model": bases, "main_body": list(MAIN_BODIES)})


#: What this API adds to the app (mounted by ``app``).
MOUNT = Mount(routers=(router, training_router), errors=((PREFIX, render_error, ErrorOut),))
