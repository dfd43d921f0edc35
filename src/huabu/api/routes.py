"""huabu's own API, under ``/huabu/v1`` (a prefix no emulated service uses).

Its request body *is* the native ``GenerationRequest`` (it is the one API with no foreign
wire format to adapt); its responses are the task, image and model shapes below.
"""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from huabu.catalog.preprocessors import listing as preprocessor_listing
from huabu.catalog.styles import read_styles
from huabu.errors import DatabaseUnavailable, Forbidden, InvalidRequest
from huabu.native import GenerationRequest
from huabu.tasks.records import TaskRecord, UploadRecord
from huabu.web.deps import BaseUrl, CurrentUser, ServicesDep
from huabu.web.error_renderers import NativeError
from huabu.web.openapi import MULTIPART, schema_of
from huabu.web.routing import GuardedRoute
from huabu.web.services import Services
from huabu.web.waiting import wait_for_task

PREFIX = "/huabu/v1"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["native"])

_KEEPALIVE_SECONDS = 15.0
_MAX_WAIT_SECONDS = 60.0


class ProgressOut(BaseModel):
    step: int
    total: int
    percent: float


class ImageOut(BaseModel):
    index: int
    seed: int
    url: str
    preview_url: str
    format: str
    width: int
    height: int
    size_bytes: int
    infotext: str


class GenerationBody(GenerationRequest):
    """A generation request, and the level to queue it at."""

    priority: int | None = Field(
        default=None,
        description="Queue at this level instead of your own (higher goes first): at most "
        "yours, which an admin sets on your account or API key; unset: yours.",
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Announce the task's end here (task.succeeded, task.failed, "
        "task.cancelled), signed as Standard Webhooks with your secret "
        "(POST /huabu/v1/me/webhook-secret).",
    )


class TaskOut(BaseModel):
    id: str
    kind: str
    origin: str
    state: str = Field(description="queued, running, succeeded, failed or cancelled")
    model: str
    progress: ProgressOut
    queue_position: int | None = Field(description="Tasks ahead of this one (0 = next).")
    eta_seconds: float | None = Field(description="Estimated seconds to finish.")
    batch_size: int = Field(
        description="Tasks that shared its denoising loop, itself included (1: it ran alone)."
    )
    priority: int = Field(description="The level it was queued at; higher levels go first.")
    preview: str | None = Field(
        default=None,
        description="While running: the image as it denoises, a `data:image/png;base64,` URL "
        "at 1/8 of its size (A1111's Approx cheap), refreshed every HUABU_PREVIEW_SECONDS.",
    )
    attempts: int
    error: str | None
    request: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    images: list[ImageOut]


class TaskPage(BaseModel):
    data: list[TaskOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class ModelOut(BaseModel):
    name: str
    kind: str
    architecture: str = Field(
        description="The model family: sd1, sd2, sdxl, sdxl-refiner, flux1, flux1-schnell, "
        "flux1-kontext, flux2, flux2-klein, qwen-image, qwen-image-edit, z-image, sd3; unknown "
        "where the files do not tell."
    )
    label: str = Field(description='The family as people write it: "SD 1.x", "FLUX.1" …')
    layout: str
    size_bytes: int


class ModelList(BaseModel):
    data: list[ModelOut]


class UploadForm(BaseModel):
    file: bytes = Field(description="A PNG, JPEG or WebP image")


class UploadOut(BaseModel):
    id: str = Field(
        description="Use as `init_image`, `inpaint.mask` or an adapter's `image` in a generation."
    )
    content_type: str
    width: int
    height: int
    size_bytes: int


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str
    password: str


class SessionOut(BaseModel):
    token: str = Field(description="Send as 'Authorization: Bearer <token>'.")
    expires_at: datetime


class MeOut(BaseModel):
    id: str
    email: str
    is_admin: bool


def data_url(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def task_out(record: TaskRecord, services: Services, base: str) -> TaskOut:
    sign = services.signer.path
    return TaskOut(
        id=str(record.id),
        kind=record.kind,
        origin=record.origin,
        state=record.state,
        model=record.model,
        progress=ProgressOut(step=record.step, total=record.total, percent=record.percent),
        queue_position=record.queue_position,
        eta_seconds=record.eta_seconds,
        batch_size=record.batch_size,
        priority=record.priority,
        preview=data_url(record.preview),
        attempts=record.attempts,
        error=record.error,
        request=record.request.model_dump(mode="json"),
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        images=[
            ImageOut(
                index=image.index,
                seed=image.seed,
                url=base + sign(image.key),
                preview_url=base + sign(image.preview_key),
                format=image.format,
                width=image.width,
                height=image.height,
                size_bytes=image.size_bytes,
                infotext=image.infotext,
            )
            for image in record.images
        ],
    )


def task_response(
    record: TaskRecord, services: Services, base: str, status_code: int = 200
) -> Response:
    """The task as JSON, serialised once (returning the model would validate it again)."""
    return Response(
        task_out(record, services, base).model_dump_json(),
        status_code=status_code,
        media_type="application/json",
    )


def upload_out(record: UploadRecord) -> UploadOut:
    return UploadOut(
        id=str(record.id),
        content_type=record.content_type,
        width=record.width,
        height=record.height,
        size_bytes=record.size_bytes,
    )


@router.post(
    "/generations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskOut,
    summary="Queue a text-to-image or image-to-image generation",
)
def submit_generation(
    body: GenerationBody, user: CurrentUser, services: ServicesDep, base: BaseUrl
) -> Response:
    # Only what the caller sent: the model's family fills in what it left out.
    sent = body.model_dump(exclude={"priority", "webhook_url"}, exclude_unset=True)
    request = GenerationRequest.model_validate(sent)
    record = services.submitter.submit_generation(
        user, request, origin="native", priority=body.priority, webhook_url=body.webhook_url
    )
    return task_response(record, services, base, status.HTTP_202_ACCEPTED)


@router.get("/tasks", response_model=TaskPage, summary="Your tasks, newest first")
def list_tasks(
    user: CurrentUser,
    services: ServicesDep,
    base: BaseUrl,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> TaskPage:
    records, next_cursor = services.tasks.list(user.id, limit=limit, cursor=cursor)
    return TaskPage(data=[task_out(r, services, base) for r in records], next_cursor=next_cursor)


@router.get("/tasks/{task_id}", response_model=TaskOut, summary="One task")
async def get_task(
    task_id: str,
    user: CurrentUser,
    services: ServicesDep,
    base: BaseUrl,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=_MAX_WAIT_SECONDS,
            description="Long poll: wait up to this many seconds for the task to finish.",
        ),
    ] = 0,
) -> Response:
    record = services.tasks.peek(user.id, task_id)
    if record is None or (wait and not record.finished):
        record = await wait_for_task(services, user.id, task_id, wait)
    return task_response(record, services, base)


@router.post("/tasks/{task_id}/cancel", response_model=TaskOut, summary="Cancel a task")
def cancel_task(task_id: str, user: CurrentUser, services: ServicesDep, base: BaseUrl) -> Response:
    """Queued: cancelled at once. Running: stops at its next step (the returned state is still
    `running`; follow the task). Finished: returned unchanged."""
    return task_response(services.cancel(user.id, task_id), services, base)


@router.delete(
    "/tasks/{task_id}",
    status_code=204,
    summary="Delete a task and its images",
    responses={404: {"model": NativeError, "description": "No such task of yours"}},
)
def delete_task(task_id: str, user: CurrentUser, services: ServicesDep) -> Response:
    """Unfinished: cancelled first. Its images and previews are removed from storage (a
    running task's within a minute of its end) and their URLs answer 404; the task reads as
    gone from now on."""
    services.delete(user.id, task_id)
    return Response(status_code=204)


@router.get(
    "/tasks/{task_id}/events",
    summary="Live progress (server-sent events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def task_events(
    task_id: str, user: CurrentUser, services: ServicesDep, base: BaseUrl
) -> StreamingResponse:
    """One `task` event with the whole task at every change; the stream ends after the
    task finishes."""
    changed = services.events.subscribe(task_id)
    try:
        first = await run_in_threadpool(services.tasks.get, user.id, task_id)
    except BaseException:
        services.events.unsubscribe(task_id, changed)
        raise

    async def stream():
        record = first
        try:
            while True:
                body = task_out(record, services, base).model_dump_json()
                yield f"event: task\ndata: {body}\n\n"
                if record.finished:
                    return
                while True:
                    try:
                        await asyncio.wait_for(changed.wait(), _KEEPALIVE_SECONDS)
                        break
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                changed.clear()
                record = await run_in_threadpool(services.tasks.get, user.id, task_id)
        finally:
            services.events.unsubscribe(task_id, changed)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


@router.get("/models", response_model=ModelList, summary="Models the fleet can serve")
def list_models(user: CurrentUser, services: ServicesDep, kind: str = "checkpoints") -> ModelList:
    kinds = services.catalog.kinds
    if kind not in kinds:
        raise InvalidRequest(f"kind must be one of {', '.join(kinds)}, got {kind!r}", param="kind")
    return ModelList(
        data=[
            ModelOut(
                name=entry.name,
                kind=entry.kind,
                architecture=entry.architecture.value if entry.architecture else "unknown",
                label=entry.describe_architecture,
                layout=entry.layout,
                size_bytes=entry.size_bytes,
            )
            for entry in services.catalog.entries(kind)
        ]
    )


class StyleOut(BaseModel):
    name: str
    prompt: str = Field(description="Its text; `{prompt}` marks where the request's prompt goes")
    negative_prompt: str


@router.get(
    "/styles",
    response_model=list[StyleOut],
    summary="Prompt styles (the server's styles.csv), for a request's `styles`",
)
def list_styles(user: CurrentUser, services: ServicesDep) -> list[StyleOut]:
    return [
        StyleOut(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
        for s in read_styles(services.settings).values()
    ]


class PreprocessorOut(BaseModel):
    name: str
    available: bool = Field(description="Runs on this server")
    needs: str | None = Field(description="What it would need to run here")


@router.get(
    "/preprocessors",
    response_model=list[PreprocessorOut],
    summary="ControlNet preprocessors, and which run here",
)
def list_preprocessors(user: CurrentUser, services: ServicesDep) -> list[PreprocessorOut]:
    held = set(services.catalog.names("annotators"))
    return [PreprocessorOut.model_validate(item) for item in preprocessor_listing(held)]


@router.post(
    "/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    summary="Upload an image (multipart field `file`, or the raw image as the body)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                MULTIPART: {"schema": schema_of(UploadForm)},
                "image/*": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def upload(request: Request, user: CurrentUser, services: ServicesDep) -> UploadOut:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise InvalidRequest("file: send the image as the multipart field 'file'", param="file")
        data = await file.read()
    else:
        data = await request.body()
    record = await run_in_threadpool(services.uploads.upload, user.id, data)
    return upload_out(record)


@router.post("/sessions", status_code=201, response_model=SessionOut, summary="Log in")
def login(body: LoginIn, request: Request, services: ServicesDep) -> SessionOut:
    client = request.client.host if request.client else None
    user = services.auth.check_password(body.email, body.password, client)
    token, expires = services.accounts.create_session(user.id, services.settings.session_ttl)
    return SessionOut(token=token, expires_at=expires)


@router.delete("/sessions/current", status_code=204, summary="Log out")
def logout(request: Request, user: CurrentUser, services: ServicesDep) -> Response:
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if token.startswith("hbs_"):
        services.accounts.end_session(token)
        services.auth.forget(token)
    return Response(status_code=204)


@router.get("/me", response_model=MeOut, summary="Who you are")
def me(user: CurrentUser) -> MeOut:
    return MeOut(id=str(user.id), email=user.email, is_admin=user.is_admin)


class FleetWorker(BaseModel):
    name: str = Field(description="host-pid")
    host: str
    device: str
    state: Literal["busy", "idle", "silent", "stopped"] = Field(
        description="silent: no heartbeat within HUABU_STALLED_SECONDS"
    )
    kinds: list[str]
    loaded: list[str] = Field(description="Checkpoints in its memory now")
    checkpoint_loads: int = Field(description="Checkpoints it has loaded since it started")
    models_held: int = Field(description="Models on its own disk")
    current_task: str | None
    started_at: str
    last_heartbeat: str
    tasks_done: int


class FleetQueue(BaseModel):
    kind: str
    model: str
    queued: int
    running: int


class FleetOut(BaseModel):
    workers: list[FleetWorker]
    queues: list[FleetQueue]
    oldest_queued_seconds: float | None


@router.get(
    "/admin/fleet",
    response_model=FleetOut,
    summary="Every worker and queue (admins only)",
    responses={403: {"model": NativeError, "description": "Not an admin"}},
)
def admin_fleet(user: CurrentUser, services: ServicesDep) -> Response:
    if not user.is_admin:
        raise Forbidden("admins only: the fleet view shows every worker and queue")
    return JSONResponse(services.tasks.fleet())


class HealthOut(BaseModel):
    status: str = Field(description="ok, or unavailable (with 503)")
    database: str = Field(description="ok, or unreachable")
    workers: int | None = Field(default=None, description="Workers with a fresh heartbeat")
    queued: int | None = None
    running: int | None = None
    message: str | None = None


@router.get(
    "/health",
    summary="Liveness, live workers, queue length (no credentials)",
    responses={
        200: {"model": HealthOut, "description": "Serving"},
        503: {"model": HealthOut, "description": "The database is unreachable"},
    },
)
def health(services: ServicesDep) -> Response:
    try:
        summary = services.tasks.queue_summary()
    except DatabaseUnavailable as exc:
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable", "message": exc.message},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )
    return JSONResponse({"status": "ok", "database": "ok", **summary})
