"""procrastinate, adapted to huabu's worker, behind the few calls the worker makes: ``open``,
``close``, ``run`` (fetch and run jobs until the database fails or ``run`` is cancelled) and
``stalled`` (the jobs of workers whose heartbeat stopped). Nothing else of the worker touches
procrastinate.

The adaptation: procrastinate's heartbeat ends its worker on the first database error, and a
job whose end cannot be recorded raises. Here a failed heartbeat is only not counted (the
worker's watchdog acts on ``last_beat``'s age), and a job end that cannot be recorded (the
database is away, or the job was handed to another worker meanwhile) is logged in one line.
Jobs are fetched through huabu's router (``worker.router``), not by queue name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import procrastinate
from procrastinate import exceptions as pexceptions

from huabu.errors import DatabaseUnavailable, first_line
from huabu.settings import Settings
from huabu.tasks import queue

log = logging.getLogger("huabu.worker")

#: Runs one job: its queue's name, its id and the task id it carries.
RunJob = Callable[[str, int, str], Awaitable[None]]
#: The router's choice of the next job: given procrastinate's fetch and this worker's id.
NextJob = Callable[[Callable[..., Awaitable[Any]], int], Awaitable[Any]]


class Jobs:
    """The job queue as one worker sees it."""

    def __init__(
        self, settings: Settings, conninfo: str, kinds: list[str], run: RunJob, next_job: NextJob
    ) -> None:
        self.settings = settings
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
        #: procrastinate's id of this worker once it fetches: jobs that join a batch are
        #: taken in its name.
        self.worker_id: int | None = None
        #: When a heartbeat was last written (registering counts as the first).
        self.last_beat = time.monotonic()

        async def job(context: Any, task_id: str) -> None:
            await run(context.job.queue, context.job.id, task_id)

        for kind in kinds:
            self.app.task(
                name=queue.TASK_NAMES[kind],
                pass_context=True,
                # Task failures are recorded on the task row and end the job; what reaches
                # procrastinate is a shutdown (WorkerStopping) or the database failing under
                # us: both are retried, and the task's own attempt counter bounds the crashes.
                retry=procrastinate.RetryStrategy(max_attempts=settings.max_attempts + 10, wait=1),
            )(job)
        self._adapt(self.app.job_manager, next_job)

    async def open(self) -> None:
        await self.app.open_async()

    async def close(self) -> None:
        await self.app.close_async()

    async def run(self, name: str) -> None:
        """Fetch and run jobs, one at a time, until the database fails under procrastinate
        (it returns or raises) or this is cancelled."""
        self.last_beat = time.monotonic()
        await self.app.run_worker_async(
            queues=None,  # type: ignore[arg-type]  # every queue: the router picks
            name=name,
            concurrency=1,
            install_signal_handlers=False,
            update_heartbeat_interval=self.settings.heartbeat_seconds,
            stalled_worker_timeout=self.settings.stalled_seconds,
            delete_jobs="successful",
        )

    async def stalled(self) -> list[tuple[str, int | None]]:
        """(task id, job id) of the task jobs whose worker's heartbeat stopped. Raises
        DatabaseUnavailable."""
        try:
            jobs = await self.app.job_manager.get_stalled_jobs(
                seconds_since_heartbeat=self.settings.stalled_seconds
            )
        except pexceptions.ConnectorException as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        # A service job (webhooks) has no task: its own sweep retries it.
        return [(str(j.task_kwargs["task_id"]), j.id) for j in jobs if "task_id" in j.task_kwargs]

    def _adapt(self, manager: Any, next_job: NextJob) -> None:
        heartbeat, finish, retry = manager.update_heartbeat, manager.finish_job, manager.retry_job
        register, fetch = manager.register_worker, manager.fetch_job

        async def register_worker() -> int:
            worker_id = await register()
            self.last_beat = time.monotonic()
            return worker_id

        async def update_heartbeat(worker_id: int) -> None:
            try:
                await heartbeat(worker_id)
            except pexceptions.ConnectorException:
                return
            self.last_beat = time.monotonic()

        def recorded(end):
            async def call(job, *args, **kwargs):
                try:
                    await end(job, *args, **kwargs)
                except pexceptions.ConnectorException as exc:
                    log.warning(
                        "job %s: its end was not recorded (%s); its task is handed over by "
                        "task state, not by this job",
                        job.id,
                        first_line(exc),
                    )

            return call

        async def fetch_job(queues: Any, worker_id: int) -> Any:
            self.worker_id = worker_id
            return await next_job(fetch, worker_id)  # queues: the router's

        manager.update_heartbeat = update_heartbeat
        manager.register_worker = register_worker
        manager.fetch_job = fetch_job
        manager.finish_job = recorded(finish)
        manager.retry_job = recorded(retry)
