"""The routes of novita's v3 API (spec 003): thin; read the body, translate, submit or read through
the task service, answer."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from huabu.dialects.common import read_body, validate
from huabu.dialects.novita.translate import (
    from_native,
    prefixed,
    refiner_for,
    renamed,
    to_native,
    unsupported,
)
from huabu.dialects.novita.wire import (
    ORIGIN,
    PREFIX,
    Envelope,
    ErrorOut,
    ExtraIn,
    Img2ImgIn,
    ModelsOut,
    SubmitOut,
    TaskResultOut,
    Txt2ImgIn,
    render_error,
)
from huabu.errors import InvalidRequest
from huabu.images import decode_base64
from huabu.native import GenerationRequest
from huabu.tasks.uploads import NewUploads
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import ok, request_body, schema_of
from huabu.web.routing import GuardedRoute, Mount
from huabu.web.services import Services

router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["novita v3 (spec 003)"])


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


def _envelope_of(request: type[BaseModel]) -> dict[str, Any]:
    """The documented body: ``Envelope`` with its ``request`` described."""
    return {
        "type": "object",
        "required": ["request"],
        "properties": {"extra": schema_of(ExtraIn), "request": schema_of(request)},
    }


async def _refiner(body: Txt2ImgIn, services: Services) -> str | None:
    """``refiner_for``, read only for a request that asks for the refiner."""
    if body.refiner is None:
        return None
    return await run_in_threadpool(refiner_for, services.settings, services.catalog)


async def _envelope(request: Request) -> tuple[dict[str, Any], ExtraIn]:
    envelope = validate(Envelope, await read_body(request))
    return envelope.request, envelope.extra or ExtraIn()


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
        raise renamed(exc) from None
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
        raise prefixed(exc) from None
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
        raise renamed(exc) from None
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
        raise prefixed(exc) from None
    unsupported(parsed)
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
        raise renamed(exc) from None
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


#: What this API adds to the app (mounted by ``app``).
MOUNT = Mount(routers=(router,), errors=((PREFIX, render_error, ErrorOut),))
