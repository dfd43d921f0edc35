"""The routes of kamiya's image API (spec 002): thin; read the body, translate, submit or read
through the task service, answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from huabu.dialects.common import read_body, validate
from huabu.dialects.kamiya.translate import from_native, renamed, task_id_of, to_native
from huabu.dialects.kamiya.wire import (
    ORIGIN,
    PREFIX,
    ConfigEnvelope,
    ErrorOut,
    GenerateIn,
    TaskEnvelope,
    TasksEnvelope,
    envelope,
    render_error,
)
from huabu.errors import InvalidRequest
from huabu.images import decode_base64
from huabu.native import MAX_OFFSET, MAX_SEED, SAMPLER_NAMES
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import ok, request_body
from huabu.web.routing import GuardedRoute, Mount

router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["kamiya (spec 002)"])


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


#: What this API adds to the app (mounted by ``app``).
MOUNT = Mount(routers=(router,), errors=((PREFIX, render_error, ErrorOut),))
