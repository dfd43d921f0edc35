"""What a worker is and holds, written with its heartbeat: its row in ``workers`` (device,
kinds, loaded checkpoints, loads, current task, GPU memory: ``tasks.fleet``) and the models on
its disk (``catalog.shared``), which every API server reads to list and check models."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from huabu.catalog import shared
from huabu.catalog.library import ModelEntry, ModelLibrary
from huabu.tasks import fleet

if TYPE_CHECKING:
    from huabu.worker.runner import WorkerId


class Advert:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        identity: WorkerId,
        kinds: list[str],
        library: ModelLibrary,
        cache: Any,
        current_task: Callable[[], uuid.UUID | None],
    ) -> None:
        self.sessions, self.identity, self.kinds = sessions, identity, kinds
        self.library, self.cache, self.current_task = library, cache, current_task
        self._held: list[tuple[ModelEntry, str | None]] = []

    def write(self) -> None:
        """Once per heartbeat. Raises DatabaseUnavailable."""
        held = [
            (entry, self.library.sha256(entry, compute=False))
            for kind in self.library.kinds
            for entry in self.library.entries(kind)
        ]
        with self.sessions.begin() as session:
            fleet.advertise(
                session,
                name=self.identity.name,
                host=self.identity.host,
                device=self.identity.device,
                kinds=self.kinds,
                loaded=self.cache.loaded(),
                loads=self.cache.loads,
                current_task=self.current_task(),
                load_seconds=self.cache.load_seconds,
                gpu_memory=self.cache.gpu_memory(),
                memory_plans=self.cache.memory_plans(),
            )
            if held != self._held:  # the catalog rows change only when the disk does
                shared.describe_held(session, self.identity.name, held)
        self._held = held

    def hash_next(self) -> bool:
        """Hash one file the last advert held without a hash; False when none is left. Apart
        from ``write``: hashing a checkpoint of several GB takes seconds, and a worker whose
        advert waits for it looks dead meanwhile (no live worker, no ETA)."""
        unhashed = next(
            (e for e, digest in self._held if digest is None and e.path.is_file()), None
        )
        if unhashed is None:
            return False
        self.library.sha256(unhashed)  # cached per file version; the next advert carries it
        return True

    def leave(self) -> None:
        """Say goodbye: the worker is stopped, and holds no task."""
        with self.sessions.begin() as session:
            fleet.leave(session, self.identity.name)
