"""Waiting for a task to finish, for the synchronous APIs (and long polls)."""

from __future__ import annotations

import asyncio
import uuid

from fastapi.concurrency import run_in_threadpool

from huabu.tasks.records import TaskRecord
from huabu.web.services import Services


async def wait_for_task(
    services: Services, owner_id: uuid.UUID, task_id: str, timeout: float
) -> TaskRecord:
    """The task once finished, or as it is when ``timeout`` runs out. Wakes on the task's
    change notifications, not by polling."""
    changed = services.events.subscribe(task_id)
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
