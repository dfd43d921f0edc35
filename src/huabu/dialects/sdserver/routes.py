"""The routes of the plain SD API server (spec 004): thin; read the body, translate, submit or read
through the task service, answer."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from huabu.dialects.common import read_body, validate
from huabu.dialects.sdserver.translate import from_native, round8, to_native
from huabu.dialects.sdserver.wire import (
    ORIGIN,
    PATHS,
    ErrorOut,
    ImagesOut,
    Img2ImgForm,
    Txt2ImgForm,
    render_error,
)
from huabu.images import decode_base64
from huabu.native import GenerationRequest
from huabu.tasks.uploads import NewUploads
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import FORM, JSON, MULTIPART, SYNC, request_body
from huabu.web.routing import GuardedRoute, Mount
from huabu.web.services import Services
from huabu.web.waiting import submit_and_wait

router = APIRouter(route_class=GuardedRoute, tags=["Stable Diffusion API Server (spec 004)"])


async def _run(
    request: GenerationRequest, user, services: Services, url, uploads: NewUploads | None = None
) -> Response:
    record = await submit_and_wait(services, user, request, origin=ORIGIN, uploads=uploads)
    return JSONResponse(from_native(record, url).model_dump())


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
        form.width or min(1024, round8(upload.width)),
        form.height or min(1024, round8(upload.height)),
    )
    model = await run_in_threadpool(services.catalog.default_model)
    native = to_native(form, model=model, init_image=upload.id, size=size)
    return await _run(native, user, services, url, uploads)


#: What this API adds to the app (mounted by ``app``).
MOUNT = Mount(routers=(router,), errors=tuple((path, render_error, ErrorOut) for path in PATHS))
