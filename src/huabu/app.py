"""The ASGI application: every dialect's router, the file server, and the services behind
them; with ``HUABU_WORKER`` (the default) a worker runs in the same process."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from huabu import __version__, api
from huabu.db.server import database_uri
from huabu.db.server import release as release_database
from huabu.db.session import open_database
from huabu.dialects.a1111 import routes as a1111
from huabu.dialects.kamiya import routes as kamiya
from huabu.dialects.novita import routes as novita
from huabu.dialects.openai import routes as openai
from huabu.dialects.sdserver import routes as sdserver
from huabu.dialects.v1b import routes as v1b
from huabu.settings import Settings
from huabu.tasks.records import TaskRecord
from huabu.tasks.service_jobs import ServiceJobs
from huabu.web import error_renderers, files, page, prometheus
from huabu.web.guards import RequestGuard
from huabu.web.idempotency_header import IdempotencyKeys
from huabu.web.limits import BodyLimit
from huabu.web.openapi import truthful_openapi
from huabu.web.prometheus import RequestTimer, Telemetry
from huabu.web.services import Services

log = logging.getLogger("huabu.web")

#: Every API the app serves: huabu's own, then the dialects.
MOUNTS = (
    api.MOUNT,
    sdserver.MOUNT,
    v1b.MOUNT,
    novita.MOUNT,
    kamiya.MOUNT,
    a1111.MOUNT,
    openai.MOUNT,
)


def _render_task(services: Services, record: TaskRecord) -> dict[str, Any]:
    """A task as ``GET /huabu/v1/tasks/{id}`` returns it, for webhook bodies: file URLs on
    HUABU_PUBLIC_URL (else this server's own address)."""
    settings = services.settings
    base = (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    return api.routes.task_out(record, services, base).model_dump(mode="json")


def create_app(settings: Settings, sessions: sessionmaker[Session] | None = None) -> FastAPI:
    """The app; ``sessions``: a database the caller opened (and migrated) already, else the
    app opens it when it starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        uri = await run_in_threadpool(database_uri, settings)
        database = (
            sessions if sessions is not None else await run_in_threadpool(open_database, settings)
        )
        services = Services.build(settings, database, uri, _render_task)
        app.state.services = services
        telemetry.watch(services)
        await services.events.start()
        jobs = ServiceJobs(settings, uri, database, services.storage, services.deliveries)
        await jobs.start()
        worker = None
        if settings.worker:
            from huabu.worker.process import Worker  # imports torch; API-only servers skip it

            worker = await run_in_threadpool(Worker, settings, database)
            await worker.start()
        # Everything built so far lives as long as the process: out of the collector's sight,
        # a full collection (triggered by request garbage) no longer walks every module's
        # objects while the event loop waits (50-200 ms with a worker's libraries loaded).
        gc.freeze()
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()
            await jobs.stop()
            await services.events.stop()
            # uvicorn ends the process by re-raising SIGTERM/SIGINT, which skips atexit hooks.
            database.kw["bind"].dispose()
            await run_in_threadpool(release_database, settings)

    app = FastAPI(
        title="huabu",
        version=__version__,
        description="Self-hosted image generation. Native API under /huabu/v1; "
        "files under /files (signed URLs).",
        lifespan=lifespan,
    )
    renderers = error_renderers.ErrorRenderers()
    app.state.error_renderers = renderers
    error_renderers.install(app, renderers)
    app.openapi = lambda: truthful_openapi(app, renderers)  # type: ignore[method-assign]
    telemetry = Telemetry()
    app.state.telemetry = telemetry
    app.add_middleware(IdempotencyKeys, renderers=renderers)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, renderers=renderers)
    app.add_middleware(RequestGuard, settings=settings, renderers=renderers)
    app.add_middleware(RequestTimer, telemetry=telemetry)
    # Outermost: sees everything.
    app.add_middleware(error_renderers.LastResort, renderers=renderers)
    for mount in MOUNTS:
        for router in mount.routers:
            app.include_router(router)
        for prefix, renderer, shape in mount.errors:
            renderers.register(prefix, renderer, shape)
    app.include_router(files.router)
    app.include_router(prometheus.router)
    app.include_router(page.router)
    return app
