"""Which job a worker takes next: routing by model.

Every job sits in its checkpoint's queue (``generate/<model>``, ``train/<base model>``, see
``queue.job_queue``). A worker asks procrastinate only for the queues of checkpoints it can
serve: those on its own disk and those published in the shared store (it fetches them). Among
those it prefers the checkpoints it has loaded, so it does not evict one model to load
another that a different worker has loaded already, with one bound: once any job it could
serve has waited ``HUABU_MAX_PASS_OVER_SECONDS``, it takes the first job it can serve in the
fair order (``tasks.fairness``), so no job is passed over for longer than that (plus the run
of the job in front of it) for the sake of a loaded model.

procrastinate's own SQL (``procrastinate_fetch_job_v2``) does the locking and hand-out, in
the fair order (its job priority); this only chooses the queue names it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from huabu.catalog import shared
from huabu.catalog.library import ModelLibrary
from huabu.settings import Settings
from huabu.tasks.queue import job_queue

Fetch = Callable[..., Awaitable[Any]]

_OVERDUE = text(
    """
    SELECT EXISTS (SELECT 1 FROM tasks
                    WHERE state = 'queued' AND kind = ANY(:kinds) AND model = ANY(:models)
                      AND created_at < now() - make_interval(secs => :bound))
    """
)


class Router:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        library: ModelLibrary,
        kinds: list[str],
        loaded: Callable[[], list[str]],
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.library = library
        self.kinds = kinds
        self.loaded = loaded

    def servable(self) -> list[str]:
        """The checkpoints this worker can serve: on its disk, or published."""
        local = {entry.name for entry in self.library.entries("checkpoints")}
        with self.sessions() as session:
            return sorted(local | set(shared.published_names(session, "checkpoints")))

    def _overdue(self, models: list[str]) -> bool:
        with self.sessions() as session:
            return bool(
                session.execute(
                    _OVERDUE,
                    {
                        "kinds": self.kinds,
                        "models": models,
                        "bound": self.settings.max_pass_over_seconds,
                    },
                ).scalar()
            )

    def queues(self, models: list[str]) -> list[str]:
        return [job_queue(kind, model) for kind in self.kinds for model in models]

    async def next_job(self, fetch: Fetch, worker_id: int) -> Any:
        """The job this worker takes next (None: nothing it can serve is queued)."""
        models = await asyncio.to_thread(self.servable)
        if not models:
            return None
        loaded = [model for model in self.loaded() if model in models]
        if loaded and not await asyncio.to_thread(self._overdue, models):
            job = await fetch(queues=self.queues(loaded), worker_id=worker_id)
            if job is not None:
                return job
        return await fetch(queues=self.queues(models), worker_id=worker_id)
