"""Waiting for a task to finish: long polls, and the synchronous APIs (A1111, OpenAI, the plain
SD API server), which all submit, wait and answer the same way through ``submit_and_wait``."""

from __future__ import annotations

import asyncio
import uuid

from fastapi.concurrency import run_in_threadpool

from huabu.auth import Principal
from huabu.errors import Cancelled, TaskFailed, TaskTimedOut
from huabu.native import GenerationRequest
from huabu.tasks.records import TaskRecord
from huabu.tasks.uploads import NewUploads
from huabu.web.services import Services


async def wait_for_task(
    services: Services, owner_id: uuid.UUID, task_id: str, timeout: float
) -> TaskRecord:
    """The task once finished, or as it is when ``timeout`` runs out. Wakes on the task's
    change notifications, not by polling."""
    # Woken when the task's state changes, not at every step's progress: each wake is a read.
    changed = services.events.subscribe(task_id, progress=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        record = await run_in_threadpool(services.tasks.get, owner_id, task_id)
        while not record.finished:
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                break
            changed.clear()
            record = await run_in_threadpool(services.tasks.get, owner_id, task_id)
        return record
    finally:
        services.events.unsubscribe(task_id, changed)


async def submit_and_wait(
    services: Services,
    caller: Principal,
    request: GenerationRequest,
    *,
    origin: str,
    uploads: NewUploads | None = None,
    cancelled_ok: bool = False,
) -> TaskRecord:
    """Submit ``request`` (at the caller's priority) and wait up to ``HUABU_SYNC_TIMEOUT`` for
    it. Returns the task once it succeeded (or was cancelled, with ``cancelled_ok``); otherwise
    raises TaskFailed, Cancelled or TaskTimedOut, each carrying the task's id. Refusals at
    submit raise as they are."""
    record = await run_in_threadpool(
        services.submitter.submit_generation, caller, request, origin=origin, uploads=uploads
    )
    timeout = services.settings.sync_timeout
    record = await wait_for_task(services, caller.id, str(record.id), timeout)
    task_id = str(record.id)
    if record.state == "failed":
        raise TaskFailed(record.error or "the task failed", task_id=task_id)
    if record.state == "cancelled" and not cancelled_ok:
        raise Cancelled(record.error or "the task was cancelled", task_id=task_id)
    if not record.finished:
        raise TaskTimedOut(
            f"the task is still {record.state} after {timeout:g} s; it will finish: follow it "
            f"at /huabu/v1/tasks/{task_id}",
            task_id=task_id,
        )
    return record
