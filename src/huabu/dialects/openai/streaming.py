"""OpenAI's streamed images (``stream: true``): server-sent events as the openai SDK parses
them. ``partial_images`` of the task's live previews, kept at steps spread evenly over its
steps (``partial_images`` of the native request), then each image; the previews, made at the
latent's size, are scaled to the image's."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from PIL import Image

from huabu.auth import Principal
from huabu.catalog.infotext import encode_image
from huabu.dialects.openai.translate import usage
from huabu.native import GenerationRequest
from huabu.tasks.uploads import NewUploads
from huabu.web.services import Services

#: Seconds between keep-alive comments while nothing happens.
KEEPALIVE_SECONDS = 15.0


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(data | {'type': kind})}\n\n"


def _encoded(png: bytes, request: GenerationRequest) -> str:
    """A kept preview as the request's image: its size and format, base64."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((request.width, request.height), Image.Resampling.LANCZOS)
    data = encode_image(image, request.output_format, "", request.output_quality)
    return base64.b64encode(data).decode()


async def stream_images(
    services: Services,
    caller: Principal,
    request: GenerationRequest,
    *,
    kind: str,
    quality: str,
    origin: str,
    uploads: NewUploads | None = None,
) -> StreamingResponse:
    """Submit ``request`` (refusals raise as they are, before any event) and stream its
    ``kind`` events (``image_generation`` or ``image_edit``) until it finishes."""
    record = await run_in_threadpool(
        services.submitter.submit_generation, caller, request, origin=origin, uploads=uploads
    )
    task_id = str(record.id)
    changed = services.events.subscribe(task_id)
    shared = {
        "created_at": int(record.created_at.timestamp()),
        "size": f"{request.width}x{request.height}",
        "quality": quality,
        "background": "opaque",
        "output_format": request.output_format,
    }

    async def partials(after: int) -> AsyncIterator[tuple[int, str]]:
        kept = await run_in_threadpool(services.tasks.partial_images, caller.id, record.id, after)
        for index, png in kept:
            yield index, await run_in_threadpool(_encoded, png, request)

    async def events() -> AsyncIterator[str]:
        sent = -1
        try:
            while True:
                current = await run_in_threadpool(services.tasks.get, caller.id, task_id)
                async for index, b64 in partials(sent):
                    sent = index
                    yield _event(
                        f"{kind}.partial_image",
                        shared | {"b64_json": b64, "partial_image_index": index},
                    )
                if current.finished:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                changed.clear()
            if current.state != "succeeded":
                message = current.error or f"the task was {current.state}"
                error = {"message": f"{message} (task {task_id})", "type": "server_error"}
                yield f"data: {json.dumps({'error': error | {'param': None, 'code': None}})}\n\n"
                return
            for image in current.images:
                data = await run_in_threadpool(services.storage.get, image.key)
                yield _event(
                    f"{kind}.completed",
                    shared
                    | {
                        "b64_json": base64.b64encode(data).decode(),
                        "created_at": int(time.time()),
                        "usage": usage(request.prompt),
                    },
                )
        finally:
            services.events.unsubscribe(task_id, changed)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
