"""The fleet as the database knows it: what each worker advertises with its heartbeat, and
the queues. Workers write (``advertise``, ``leave``); ``fleet_view`` reads it for
``huabu status`` and ``GET /huabu/v1/admin/fleet``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

_ADVERTISE = text(
    """
    INSERT INTO workers (name, host, device, kinds, loaded, loads, current_task, load_seconds,
                         gpu_memory_bytes, memory_plans)
    VALUES (:name, :host, :device, CAST(:kinds AS jsonb), CAST(:loaded AS jsonb), :loads,
            :current, :load_seconds, :gpu_memory, CAST(:plans AS jsonb))
    ON CONFLICT (name) DO UPDATE
       SET host = EXCLUDED.host, device = EXCLUDED.device, kinds = EXCLUDED.kinds,
           loaded = EXCLUDED.loaded, loads = EXCLUDED.loads,
           load_seconds = EXCLUDED.load_seconds, gpu_memory_bytes = EXCLUDED.gpu_memory_bytes,
           memory_plans = EXCLUDED.memory_plans,
           current_task = EXCLUDED.current_task,
           last_seen = now(), stopped_at = NULL
    """
)
_LEAVE = text(
    "UPDATE workers SET stopped_at = now(), current_task = NULL, last_seen = now() "
    "WHERE name = :name"
)
_WORKERS = text(
    """
    SELECT w.name, w.host, w.device, w.kinds, w.loaded, w.memory_plans, w.loads, w.models,
           w.current_task,
           w.started_at,
           w.last_seen, w.stopped_at,
           (SELECT count(*) FROM task_runs r
             WHERE r.worker = w.name AND r.outcome = 'succeeded') AS done
      FROM workers w
     WHERE w.stopped_at IS NULL OR w.stopped_at > now() - interval '1 hour'
     ORDER BY w.host, w.name
    """
)
_QUEUES = text(
    """
    SELECT kind, model, state, count(*), min(created_at)
      FROM tasks WHERE state IN ('queued', 'running')
     GROUP BY kind, model, state ORDER BY kind, model
    """
)


def advertise(
    session: Session,
    *,
    name: str,
    host: str,
    device: str,
    kinds: list[str],
    loaded: list[str],
    loads: int,
    current_task: uuid.UUID | None,
    load_seconds: float = 0.0,
    gpu_memory: int | None = None,
    memory_plans: dict[str, str] | None = None,
) -> None:
    session.execute(
        _ADVERTISE,
        {
            "name": name,
            "host": host,
            "device": device,
            "kinds": json.dumps(kinds),
            "loaded": json.dumps(loaded),
            "loads": loads,
            "current": current_task,
            "load_seconds": load_seconds,
            "gpu_memory": gpu_memory,
            "plans": json.dumps(memory_plans or {}),
        },
    )


def leave(session: Session, name: str) -> None:
    session.execute(_LEAVE, {"name": name})


def _stamp(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def fleet_view(session: Session, *, stalled_seconds: float) -> dict[str, Any]:
    """Every worker seen in the last hour (state ``busy``, ``idle``, ``silent`` — no heartbeat
    within the stall limit — or ``stopped``), and the queue per kind and model."""
    now = datetime.now(UTC)
    workers = []
    for row in session.execute(_WORKERS):
        silent = (now - row.last_seen).total_seconds() > stalled_seconds
        state = (
            "stopped"
            if row.stopped_at
            else "silent"
            if silent
            else "busy"
            if row.current_task
            else "idle"
        )
        workers.append(
            {
                "name": row.name,
                "host": row.host,
                "device": row.device,
                "state": state,
                "kinds": row.kinds,
                "loaded": row.loaded,
                "memory_plans": row.memory_plans,
                "checkpoint_loads": row.loads,
                "models_held": len(row.models),
                "current_task": str(row.current_task) if row.current_task else None,
                "started_at": _stamp(row.started_at),
                "last_heartbeat": _stamp(row.last_seen),
                "tasks_done": row.done,
            }
        )
    queues: dict[tuple[str, str], dict[str, Any]] = {}
    oldest: datetime | None = None
    for kind, model, state, count, first in session.execute(_QUEUES):
        entry = queues.setdefault(
            (kind, model), {"kind": kind, "model": model, "queued": 0, "running": 0}
        )
        entry[state] = count
        if state == "queued" and (oldest is None or first < oldest):
            oldest = first
    return {
        "workers": workers,
        "queues": list(queues.values()),
        "oldest_queued_seconds": round((now - oldest).total_seconds(), 1) if oldest else None,
    }
