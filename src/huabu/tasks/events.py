"""Task change notifications for the API process: one LISTEN connection per server.

Workers ``pg_notify`` on every state or progress change (in the same transaction, so a
notification never announces an uncommitted change). Progress streams and long polls wait
here instead of polling the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

import psycopg

from huabu.errors import first_line
from huabu.tasks.queue import CHANNEL, PROGRESS

log = logging.getLogger("huabu.events")


class TaskEvents:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        #: task id → its waiters, each with whether it wakes for progress too.
        self._waiters: dict[str, dict[asyncio.Event, bool]] = defaultdict(dict)
        self._runner: asyncio.Task | None = None
        self._connected = asyncio.Event()
        #: Called with each changed task's id (None: anything may have changed), before
        #: waiters wake, so a cache is dropped before anyone re-reads.
        self.listeners: list[Callable[[str | None], None]] = []

    async def start(self) -> None:
        self._runner = asyncio.create_task(self._listen(), name="huabu-task-events")
        await asyncio.wait_for(self._connected.wait(), timeout=30)

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.uri, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self._connected.set()
                    delay = 0.5
                    self._wake_all()  # anything may have changed while we were away
                    async for notice in connection.notifies():
                        task_id = notice.payload.removesuffix(PROGRESS)
                        state_changed = task_id == notice.payload
                        for listener in self.listeners:
                            listener(task_id)
                        for event, progress in self._waiters.get(task_id, {}).items():
                            if progress or state_changed:
                                event.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("task notifications interrupted (%s); reconnecting", first_line(exc))
                self._wake_all()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    def _wake_all(self) -> None:
        for listener in self.listeners:
            listener(None)
        for events in self._waiters.values():
            for event in events:
                event.set()

    def subscribe(self, task_id: str, *, progress: bool = True) -> asyncio.Event:
        """An event set at every change of ``task_id`` (with ``progress=False``: of its state,
        not of its progress alone); clear it after reading, and ``unsubscribe`` when done. For
        streams that must not miss a change between waits."""
        event = asyncio.Event()
        self._waiters[task_id][event] = progress
        return event

    def unsubscribe(self, task_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(task_id)
        if waiters is not None:
            waiters.pop(event, None)
            if not waiters:
                del self._waiters[task_id]
