"""The service's own jobs, run by every ``huabu serve`` process (API servers included; no
torch): webhook deliveries (``tasks.webhooks``), a sweep each minute that queues again any
delivery whose sender died mid-try, and the housekeeping of ``tasks.retention`` each minute
(periodic jobs: deferred once per minute for the whole fleet). They live on procrastinate's
``huabu-service`` queue, which generation workers never take (they fetch their own queues;
``worker.router``).

A database outage ends procrastinate's worker; it is started again once the database
answers, and says so in one line. Jobs in flight then are retried by their delivery's lease.
"""

from __future__ import annotations

import asyncio
import logging

import procrastinate
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.errors import first_line
from huabu.settings import Settings
from huabu.storage import Storage
from huabu.tasks import retention, webhooks

log = logging.getLogger("huabu.service")

#: Pending deliveries whose lease ran out (their sender died): queued again.
_ORPHANS = text(
    f"""
    WITH orphans AS (
      UPDATE webhook_deliveries SET next_attempt_at = now()
       WHERE state = 'pending' AND next_attempt_at < now() - interval '30 seconds'
      RETURNING id)
    SELECT procrastinate_defer_jobs_v1(ARRAY[ROW('{webhooks.QUEUE}', '{webhooks.TASK_NAME}', 0,
           NULL, NULL, jsonb_build_object('delivery_id', id::text),
           NULL)::procrastinate_job_to_defer_v1])
      FROM orphans
    """
)


class ServiceJobs:
    def __init__(
        self,
        settings: Settings,
        conninfo: str,
        sessions: sessionmaker[Session],
        storage: Storage,
        deliveries: webhooks.Deliveries,
        *,
        concurrency: int = 4,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.deliveries = deliveries
        self.concurrency = concurrency
        self.app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo))
        self.app.task(name=webhooks.TASK_NAME, queue=webhooks.QUEUE)(self._deliver)
        sweep = self.app.task(name="huabu.sweep_webhooks", queue=webhooks.QUEUE)(self._sweep)
        self.app.periodic(cron="* * * * *")(sweep)
        tidy = self.app.task(name="huabu.housekeeping", queue=webhooks.QUEUE)(self._housekeeping)
        self.app.periodic(cron="* * * * *")(tidy)
        self._task: asyncio.Task | None = None

    async def _deliver(self, delivery_id: str) -> None:
        await asyncio.to_thread(self.deliveries.deliver, delivery_id)

    async def _sweep(self, timestamp: int) -> None:
        def sweep() -> None:
            with self.sessions.begin() as session:
                session.execute(_ORPHANS)

        await asyncio.to_thread(sweep)

    async def _housekeeping(self, timestamp: int) -> None:
        await asyncio.to_thread(retention.housekeeping, self.settings, self.sessions, self.storage)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="huabu-service-jobs")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _supervise(self) -> None:
        while True:
            try:
                async with self.app.open_async():
                    await self.app.run_worker_async(
                        queues=[webhooks.QUEUE],
                        name="huabu-service",
                        concurrency=self.concurrency,
                        install_signal_handlers=False,
                        fetch_job_polling_interval=1.0,
                        delete_jobs="successful",
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away (or refused us): wait, restart
                log.warning(
                    "service jobs (webhooks) stopped: %s; starting again in 5 s", first_line(exc)
                )
            await asyncio.sleep(5)
