"""The worker: a procrastinate worker that runs generation and training tasks (one of the two
with ``HUABU_WORKER_TRAINING=false`` or ``HUABU_WORKER_GENERATION=false``) for the checkpoints
it can serve (``worker.router``), plus the reaper that gives the tasks of dead workers back to
the queue, and the advert of what it is and holds (``worker.advert``). The jobs come through
``worker.jobs`` (procrastinate, adapted).

``huabu worker`` runs one alone; ``huabu serve`` runs one inside the server process unless
``HUABU_WORKER=false``. One run at a time per worker (one GPU): one job, or one job and the
queued jobs that join its batch (``worker.batcher``).

The database may go away (a restart, a failover, killed connections, an outage of minutes);
the worker never exits for that. A supervisor restarts the procrastinate worker once the
database answers again. This worker's heartbeat is watched: once it is older than half the
stall limit (before any other worker may presume this one dead, at the full limit), the running
task stops at its next step and writes nothing more, and this worker hands it back itself once
the database is back (unless another worker's reaper did first). So no task runs on two
workers at once, and none fails for an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.catalog.library import ModelLibrary
from huabu.catalog.transfer import ModelCache
from huabu.db.server import database_uri
from huabu.errors import DatabaseUnavailable, first_line
from huabu.settings import Settings
from huabu.storage import open_storage
from huabu.tasks import queue
from huabu.worker.advert import Advert
from huabu.worker.batcher import Batcher
from huabu.worker.jobs import Jobs
from huabu.worker.router import Router
from huabu.worker.runner import RunLost, TaskRunner, WorkerId

log = logging.getLogger("huabu.worker")


class Worker:
    """One worker: ``await start()``, later ``await stop()`` (or ``await run()`` alone)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        # torch: only worker processes import the engine and the trainer.
        from huabu.engine.engine import Engine
        from huabu.worker.handle_generation import GenerationHandler
        from huabu.worker.handle_training import TrainingHandler

        self.kinds = settings.worker_kinds
        self.settings = settings
        self.sessions = sessions
        self.stopping = threading.Event()
        #: Set while this worker's heartbeat is stale: its running task must stop.
        self.lost = threading.Event()
        storage = open_storage(settings)
        self.library = ModelLibrary(settings, ModelCache(settings, sessions, storage))
        engine = Engine(settings, self.library)
        host = socket.gethostname()
        self.identity = WorkerId(
            name=f"{host}-{os.getpid()}", host=host, device=str(engine.cache.device)
        )
        self.name, self.cache = self.identity.name, engine.cache
        self.runner = TaskRunner(
            settings,
            sessions,
            {
                "generate": GenerationHandler(settings, storage, engine),
                "train": TrainingHandler(settings, sessions, storage, engine.cache),
            },
            self.identity,
        )
        self.router = Router(settings, sessions, self.library, self.kinds, self.cache.loaded)
        self.jobs = Jobs(
            settings,
            database_uri(settings),
            self.kinds,
            self._run_on_engine_thread,
            self.router.next_job,
        )
        self.batcher = Batcher(settings, sessions)
        self.advert = Advert(
            sessions,
            self.identity,
            self.kinds,
            self.library,
            self.cache,
            lambda: self.runner.current,
        )
        self._busy = threading.Lock()  # held while a task runs
        self._engine_thread = ThreadPoolExecutor(1, thread_name_prefix="huabu-engine")
        self._tasks: list[asyncio.Task] = []

    # -- running one job ------------------------------------------------------------------

    async def _run_on_engine_thread(self, job_queue: str, job_id: int, task_id: str) -> None:
        """Every job on one thread of its own. torch's CPU thread pool (OpenMP) belongs to the
        thread that calls it: jobs handed to whichever thread of a pool was free made two
        pools of torch threads take turns on the cores, and a task at 64² on two cores took
        2.5 times as long as the engine alone."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._engine_thread, self._run, job_queue, job_id, task_id)

    def _run(self, job_queue: str, job_id: int, task_id: str) -> None:
        gather = None
        if self.jobs.worker_id is not None:
            gather = partial(
                self.batcher.join, job_queue, self.jobs.worker_id, stopping=self.stopping
            )
        with self._busy:
            try:
                self.runner.run(uuid.UUID(task_id), self.stopping, self.lost, job_id, gather)
            except RunLost:
                # Nothing of the run was recorded: hand back what this worker gave up, once
                # the database answers (a short outage may not end this worker's heartbeat,
                # and then nothing else would settle it).
                while self.runner.stopped and not self.stopping.is_set():
                    try:
                        self.runner.settle()
                    except DatabaseUnavailable:
                        self.stopping.wait(1.0)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.jobs.open()
        self._tasks = [
            asyncio.create_task(self._supervise(), name="huabu-worker"),
            asyncio.create_task(self._reap_stalled(), name="huabu-reaper"),
            asyncio.create_task(self._advertise(), name="huabu-advertise"),
            asyncio.create_task(self._hash_library(), name="huabu-hash"),
        ]
        log.info("worker %s started", self.name)

    async def stop(self) -> None:
        """Finish at the next step: a running task goes back to the queue for another worker."""
        self.stopping.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.jobs.close()
        with contextlib.suppress(DatabaseUnavailable):
            await asyncio.to_thread(self.advert.leave)
        self._engine_thread.shutdown(wait=False)

    async def _advertise(self) -> None:
        """What this worker is and holds, with its heartbeat (see ``tasks.fleet``)."""
        while True:
            with contextlib.suppress(DatabaseUnavailable):
                await asyncio.to_thread(self.advert.write)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def _hash_library(self) -> None:
        """The held files' hashes, one at a time, beside the advert (see ``Advert.hash_next``)."""
        while True:  # one file a beat: hashing is I/O and CPU the engine may want
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.advert.hash_next)
            await asyncio.sleep(self.settings.heartbeat_seconds)

    async def run(self) -> None:
        """Run until SIGINT/SIGTERM (``huabu worker``)."""
        await self.start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        waiter = asyncio.create_task(done.wait())
        await asyncio.wait([waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in self._tasks:  # none ends by itself: one that did is a bug, said here
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error(
                    "worker %s: %s failed; stopping",
                    self.name,
                    task.get_name(),
                    exc_info=task.exception(),
                )
        await self.stop()

    async def _supervise(self) -> None:
        """Run the procrastinate worker; whenever it ends (the database went away, or the
        heartbeat went stale), stop the running task, wait for the database, hand back what
        was abandoned, and start a fresh one (a new worker row, a fresh heartbeat)."""
        while True:
            await self._wait_for_database()
            await asyncio.to_thread(self.runner.settle)
            self.lost.clear()
            jobs = asyncio.create_task(self.jobs.run(self.name), name="huabu-jobs")
            watchdog = asyncio.create_task(self._watch_heartbeat(jobs), name="huabu-watchdog")
            try:
                await asyncio.wait([jobs])
            finally:
                watchdog.cancel()
                if not jobs.done():
                    jobs.cancel()
                    await asyncio.gather(jobs, return_exceptions=True)
            if self.stopping.is_set():
                return
            # Ended by itself (a side task lost the database) or by the watchdog (cancelled).
            reason = None if jobs.cancelled() else jobs.exception()
            self.lost.set()
            log.warning(
                "worker %s: lost the database%s; its running task stops, and it "
                "starts again once the database answers",
                self.name,
                f" ({first_line(reason)})" if reason else "",
            )
            while self._busy.locked():  # the task's thread stops at its next step
                await asyncio.sleep(0.1)

    async def _watch_heartbeat(self, jobs: asyncio.Task) -> None:
        """A heartbeat older than half the stall limit: stop the running task and stop
        taking jobs, before any other worker may presume this one dead."""
        limit = self.settings.stalled_seconds / 2
        while True:
            await asyncio.sleep(min(self.settings.heartbeat_seconds, limit) / 2)
            age = time.monotonic() - self.jobs.last_beat
            if age > limit:
                log.warning(
                    "worker %s: no heartbeat written for %.1f s; stopping its task so "
                    "that no other worker runs it twice",
                    self.name,
                    age,
                )
                self.lost.set()
                jobs.cancel()
                return

    async def _wait_for_database(self) -> None:
        """Until a query goes through; says so once while it waits, and when it is back."""
        waited, delay = False, 0.5
        while True:
            try:
                await asyncio.to_thread(self._ping)
                if waited:
                    log.info("worker %s: the database answers again", self.name)
                return
            except DatabaseUnavailable:
                if not waited:
                    log.warning("worker %s: waiting for the database", self.name)
                waited = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    def _ping(self) -> None:
        with self.sessions() as session:
            session.execute(text("SELECT 1"))

    async def _reap_stalled(self) -> None:
        """Jobs of workers whose heartbeat stopped (SIGKILL, power loss, a lost database) go
        back to the queue as new jobs. The task's attempt counter bounds how often that can
        happen to one task."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            if self.lost.is_set():
                continue  # this worker is the one out of touch
            try:
                for task_id, job_id in await self.jobs.stalled():
                    handed = await asyncio.to_thread(self._reap, uuid.UUID(task_id), job_id)
                    if handed:
                        log.warning("task %s: its worker stopped answering; queued again", task_id)
            except asyncio.CancelledError:
                raise
            except DatabaseUnavailable:
                continue  # the supervisor says when the database is away

    def _reap(self, task_id: uuid.UUID, job_id: int | None) -> bool:
        with self.sessions.begin() as session:
            return queue.hand_over(
                session, task_id, outcome="worker lost", job=job_id, forgive=False
            )
