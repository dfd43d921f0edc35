"""The routes of OpenAI's images API: thin; read the body, translate, submit or read through the
task service, answer."""

from __future__ import annotations

import base64
import io
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from huabu.catalog.families import family_of
from huabu.dialects.common import image_bytes_from_url, read_body, validate
from huabu.dialects.openai.streaming import stream_images
from huabu.dialects.openai.translate import model_out, native_square, renamed, to_native, usage
from huabu.dialects.openai.wire import (
    ORIGIN,
    PREFIX,
    EditForm,
    EditIn,
    ErrorOut,
    GenerationIn,
    ImagesOut,
    ModelOut,
    ModelsOut,
    render_error,
)
from huabu.errors import InvalidRequest, NotFound
from huabu.images import alpha_mask, decode_base64
from huabu.settings import Settings
from huabu.tasks.uploads import NewUploads
from huabu.web.deps import CurrentUser, FileUrl, ServicesDep
from huabu.web.openapi import MULTIPART, SYNC, ok, request_body
from huabu.web.routing import GuardedRoute, Mount
from huabu.web.services import Services
from huabu.web.waiting import submit_and_wait

router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["OpenAI images"])


_OPENAI_MODELS = ("dall-e-", "gpt-image-")


def _resolve_model(
    services: Services, name: str | None, source_size: tuple[int, int] | None
) -> tuple[str, tuple[int, int]]:
    """The checkpoint a request means (OpenAI's own model names, and none, mean the server's
    default), and what ``size: auto`` means for it: its native square, or the size of the
    image an edit starts from, fitted to the model. Blocking (reads the library)."""
    if not name or name.startswith(_OPENAI_MODELS):
        model = services.catalog.default_model()
    else:
        model = name
    entries = {entry.name: entry for entry in services.catalog.entries("checkpoints")}
    entry = entries.get(model)
    if source_size is None:
        return model, native_square(entry)
    multiple = family_of(entry.architecture if entry else None).multiple
    return model, _fitted(*source_size, services.settings, multiple)


async def _generate(
    services: Services,
    user,
    body: GenerationIn,
    url,
    uploads: NewUploads | None = None,
    source_size: tuple[int, int] | None = None,
    kind: str = "image_generation",
    **image,
) -> Response:
    model, auto_size = await run_in_threadpool(_resolve_model, services, body.model, source_size)
    try:
        native = to_native(
            body,
            model=model,
            auto_size=auto_size,
            settings=services.settings,
            **image,
        )
        if body.stream:
            return await stream_images(
                services,
                user,
                native,
                kind=kind,
                quality=body.quality,
                origin=ORIGIN,
                uploads=uploads,
            )
        record = await submit_and_wait(services, user, native, origin=ORIGIN, uploads=uploads)
    except InvalidRequest as exc:
        raise renamed(exc) from None
    b64 = body.response_format == "b64_json" or (
        body.response_format is None and body.gpt_image_style
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
            "background": "opaque",
            "output_format": native.output_format,
            "size": f"{native.width}x{native.height}",
            "quality": body.quality,
            "usage": usage(native.prompt),
        }
    )


async def _form(request: Request) -> tuple[dict[str, Any], UploadFile | None, UploadFile | None]:
    """A multipart body: its text fields, its (first) image, its mask."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InvalidRequest("send the image as multipart/form-data", param="image")
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    images = [
        item
        for key in ("image", "image[]")
        for item in form.getlist(key)
        if isinstance(item, UploadFile)
    ]
    if len(images) > 1:
        raise InvalidRequest(
            f"image: the models here edit one image at a time, got {len(images)}", param="image"
        )
    image = images[0] if images else None
    mask = form.get("mask")
    return fields, image, mask if isinstance(mask, UploadFile) else None


async def _json_edit(
    request: Request, services: Services
) -> tuple[dict[str, Any], bytes, bytes | None]:
    """A JSON edit body (today's API): its fields, the image of ``images: [{"image_url"}]``
    (a link, fetched through the SSRF-safe fetcher, or a data URL) and of ``mask``."""
    fields = await read_body(request)
    images = fields.pop("images", None)
    mask = fields.pop("mask", None)
    if not isinstance(images, list) or not images:
        raise InvalidRequest('images is required: [{"image_url": …}]', param="images")
    if len(images) > 1:
        raise InvalidRequest(
            f"images: the models here edit one image at a time, got {len(images)}",
            param="images",
        )
    data = await run_in_threadpool(_referenced, services, images[0], "images.0")
    mask_data = None
    if mask is not None:
        mask_data = await run_in_threadpool(_referenced, services, mask, "mask")
    return fields, data, mask_data


def _referenced(services: Services, reference: Any, field: str) -> bytes:
    """The bytes of ``{"image_url": …}``: a data URL's, or a link's (fetched). Blocking."""
    if not isinstance(reference, dict) or "file_id" in reference:
        raise InvalidRequest(
            f'{field}: give {{"image_url": a link or a data URL}}; the files API (file_id) is '
            "not available here",
            param=field,
        )
    url = reference.get("image_url")
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"{field}.image_url is required", param=f"{field}.image_url")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64"):
            raise InvalidRequest(
                f"{field}.image_url: a data URL must be base64", param=f"{field}.image_url"
            )
        return decode_base64(payload, field=f"{field}.image_url")
    return image_bytes_from_url(services, url, field=f"{field}.image_url")


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


def _fitted(width: int, height: int, settings: Settings, multiple: int) -> tuple[int, int]:
    """An input image's size as an output size: multiples of ``multiple`` (the model
    family's) within the limits."""
    scale = min(
        1.0, settings.max_size / max(width, height), (settings.max_pixels / (width * height)) ** 0.5
    )

    def fit(side: int) -> int:
        return max(settings.min_size, int(side * scale) // multiple * multiple)

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
    if edit and request.headers.get("content-type", "").startswith("application/json"):
        fields, data, mask_data = await _json_edit(request, services)
    else:
        fields, image, mask_file = await _form(request)
        if image is None:
            raise InvalidRequest("image is required: send it as a file", param="image")
        data = await image.read()
        mask_data = await mask_file.read() if mask_file is not None else None
    body = validate(EditIn, fields)
    if edit and not body.prompt:
        raise InvalidRequest("prompt is required", param="prompt")
    uploads = services.new_uploads()
    upload = await run_in_threadpool(uploads.add, data, field="image")
    mask = None
    if edit:
        mask = await _mask(
            uploads, services.settings, mask_data, data, (upload.width, upload.height)
        )
    return await _generate(
        services,
        user,
        body,
        url,
        uploads,
        source_size=(upload.width, upload.height),
        kind="image_edit" if edit else "image_generation",
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


def _models(services: Services, user) -> list[dict[str, Any]]:
    """Checkpoints and the caller's trained models. Blocking."""
    entries = services.catalog.entries("checkpoints")
    trained = services.training.trained_names(user.id)
    now = time.time()
    listed = [model_out(e.name, e.modified) for e in entries]
    return listed + [model_out(name, now) for name in trained]


@router.get(
    "/models", summary="Models (checkpoints, and your trained ones)", responses=ok(ModelsOut)
)
def models(user: CurrentUser, services: ServicesDep) -> Response:
    return JSONResponse({"object": "list", "data": _models(services, user)})


@router.get("/models/{model_id}", summary="One model", responses=ok(ModelOut))
def model(model_id: str, user: CurrentUser, services: ServicesDep) -> Response:
    for item in _models(services, user):
        if item["id"] == model_id:
            return JSONResponse(item)
    raise NotFound(f"The model '{model_id}' does not exist")


#: What this API adds to the app (mounted by ``app``).
MOUNT = Mount(routers=(router,), errors=((PREFIX + "/", render_error, ErrorOut),))
