"""The worker: a procrastinate worker that runs generation tasks (and training tasks, unless
``HUABU_WORKER_TRAINING=false``), plus the reaper that gives the tasks of dead workers back to
the queue.

``huabu worker`` runs one alone; ``huabu serve`` runs one inside the server process unless
``HUABU_WORKER=false``. One job at a time per worker (one GPU, one job).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import uuid

import procrastinate
from procrastinate import exceptions as pexceptions
from sqlalchemy.orm import Session, sessionmaker

from huabu.db.server import database_uri
from huabu.settings import Settings
from huabu.storage import LocalStorage
from huabu.tasks import queue
from huabu.tasks.runner import TaskRunner

log = logging.getLogger("huabu.worker")


class Worker:
    """One worker: ``await start()``, later ``await stop()`` (or ``await run()`` alone)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        # torch: only worker processes import the engine and the trainer.
        from huabu.engine.engine import Engine
        from huabu.tasks.generation import GenerationHandler
        from huabu.training.job import TrainingHandler

        self.settings = settings
        self.sessions = sessions
        self.stopping = threading.Event()
        storage = LocalStorage(settings.files_dir)
        engine = Engine(settings)
        self.kinds = ["generate", "train"] if settings.worker_training else ["generate"]
        self.runner = TaskRunner(
            settings,
            sessions,
            {
                "generate": GenerationHandler(settings, storage, engine),
                "train": TrainingHandler(settings, storage, engine.cache),
            },
        )
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(conninfo=database_uri(settings))
        )
        for kind in self.kinds:
            self.app.task(
                name=queue.TASK_NAMES[kind],
                queue=queue.QUEUES[kind],
                # Task failures are recorded on the task row and end the job; what reaches
                # procrastinate is a shutdown (WorkerStopping) or the database failing under
                # us: both are retried, and the task's own attempt counter bounds the crashes.
                retry=procrastinate.RetryStrategy(max_attempts=settings.max_attempts + 10, wait=1),
            )(self._run)
        self._tasks: list[asyncio.Task] = []

    def _run(self, task_id: str) -> None:
        self.runner.run(uuid.UUID(task_id), self.stopping)

    async def start(self) -> None:
        await self.app.open_async()
        name = f"{socket.gethostname()}-{os.getpid()}"
        self._tasks = [
            asyncio.create_task(
                self.app.run_worker_async(
                    queues=[queue.QUEUES[kind] for kind in self.kinds],
                    name=name,
                    concurrency=1,
                    install_signal_handlers=False,
                    update_heartbeat_interval=self.settings.heartbeat_seconds,
                    stalled_worker_timeout=self.settings.stalled_seconds,
                    delete_jobs="successful",
                ),
                name="huabu-worker",
            ),
            asyncio.create_task(self._reap_stalled(), name="huabu-reaper"),
        ]
        log.info("worker %s started", name)

    async def stop(self) -> None:
        """Finish at the next step: a running task goes back to the queue for another worker."""
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.app.close_async()

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (``huabu worker``)."""
        await self.start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        waiter = asyncio.create_task(done.wait())
        await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        await self.stop()

    async def _reap_stalled(self) -> None:
        """Jobs of workers whose heartbeat stopped (SIGKILL, power loss) go back to the queue.
        The task's attempt counter bounds how often that can happen to one task."""
        manager = self.app.job_manager
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                stalled = await manager.get_stalled_jobs(
                    seconds_since_heartbeat=self.settings.stalled_seconds
                )
                for job in stalled:
                    try:
                        await manager.retry_job(job)
                    except pexceptions.ConnectorException:
                        continue  # another worker's reaper got there first
                    task_id = uuid.UUID(str(job.task_kwargs["task_id"]))
                    await asyncio.to_thread(self.runner.requeue, task_id)
                    log.warning("task %s: its worker stopped answering; queued again", task_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stalled-job check failed; trying again")
