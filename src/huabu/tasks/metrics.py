"""The fleet's figures as the database knows them, for Prometheus (``web.prometheus``).

Every server computes them from the same tables at scrape time, so API servers and workers
may be separate processes on separate machines and any server shows the whole fleet: the
database is the aggregation point (workers write what only they know — checkpoint loads,
their seconds, GPU memory — with their heartbeat). The counters and histograms over tasks are
counts of task rows; when retention deletes rows (``tasks.retention``) it first adds their
counts to ``metric_baselines``, so the counters never go down.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from huabu.tasks.fleet import fleet_view

#: Histogram buckets for a task's wait in the queue and its run, in seconds.
BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0)

#: (metric, labels) → value: the counters that count task rows (and their histograms'
#: buckets, ``le`` a label, with ``_sum`` and ``_count``).
Counts = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _histogram_sql(name: str, start: str, end: str) -> str:
    seconds = f"extract(epoch FROM {end} - {start})"
    buckets = ", ".join(
        f"count(*) FILTER (WHERE {seconds} <= {b}) AS b{i}" for i, b in enumerate(BUCKETS)
    )
    return f"""
    SELECT '{name}' AS metric, kind, {buckets}, count(*) AS n, coalesce(sum({seconds}), 0) AS s
      FROM tasks WHERE {start} IS NOT NULL AND {end} IS NOT NULL AND ({{scope}})
     GROUP BY kind
    """


_SUBMITTED = "SELECT kind, origin, count(*) FROM tasks WHERE ({scope}) GROUP BY kind, origin"
_FINISHED = (
    "SELECT kind, state, count(*), coalesce(sum(images) FILTER (WHERE state = 'succeeded'), 0) "
    "FROM tasks WHERE state IN ('succeeded', 'failed', 'cancelled') AND ({scope}) "
    "GROUP BY kind, state"
)
_HISTOGRAMS = [
    _histogram_sql("huabu_task_queue_seconds", "created_at", "started_at"),
    _histogram_sql("huabu_task_run_seconds", "started_at", "finished_at"),
]
_BASELINES = text("SELECT metric, labels, value FROM metric_baselines")
_ADD_BASELINE = text(
    """
    INSERT INTO metric_baselines (metric, labels, value)
    VALUES (:metric, CAST(:labels AS jsonb), :value)
    ON CONFLICT (metric, labels) DO UPDATE SET value = metric_baselines.value + EXCLUDED.value
    """
)
_LOADS = text("SELECT coalesce(sum(loads), 0), coalesce(sum(load_seconds), 0) FROM workers")
_GPU = text(
    """
    SELECT name, device, gpu_memory_bytes FROM workers
     WHERE stopped_at IS NULL AND gpu_memory_bytes IS NOT NULL
       AND last_seen > now() - make_interval(secs => :stalled)
    """
)


def task_counts(session: Session, scope: str = "true", params: dict | None = None) -> Counts:
    """The counters over the task rows ``scope`` (an SQL condition) selects."""
    counts: Counts = defaultdict(float)
    params = params or {}
    for kind, origin, n in session.execute(text(_SUBMITTED.format(scope=scope)), params):
        counts[("huabu_tasks_submitted_total", (("kind", kind), ("origin", origin)))] += n
    for kind, state, n, images in session.execute(text(_FINISHED.format(scope=scope)), params):
        counts[("huabu_tasks_finished_total", (("kind", kind), ("state", state)))] += n
        counts[("huabu_images_generated_total", ())] += images
    for sql in _HISTOGRAMS:
        for row in session.execute(text(sql.format(scope=scope)), params):
            metric, kind = row[0], row[1]
            for i, bound in enumerate(BUCKETS):
                counts[(f"{metric}_bucket", (("kind", kind), ("le", str(bound))))] += row[2 + i]
            counts[(f"{metric}_bucket", (("kind", kind), ("le", "+Inf")))] += row.n
            counts[(f"{metric}_count", (("kind", kind),))] += row.n
            counts[(f"{metric}_sum", (("kind", kind),))] += float(row.s)
    return counts


def retire(session: Session, scope: str, params: dict) -> None:
    """Before deleting the task rows ``scope`` selects: keep their counts in the baselines."""
    for (metric, labels), value in task_counts(session, scope, params).items():
        if value:
            session.execute(
                _ADD_BASELINE,
                {
                    "metric": metric,
                    "labels": json.dumps(dict(labels), sort_keys=True),
                    "value": value,
                },
            )


@dataclass
class Snapshot:
    """Everything ``/metrics`` shows from the database, read in one go."""

    counts: Counts = field(default_factory=dict)
    queue_depth: list[tuple[str, str, int]] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)
    model_loads: int = 0
    model_load_seconds: float = 0.0
    gpu_memory: list[tuple[str, str, int]] = field(default_factory=list)
    #: (worker, model, plan) of every loaded flow model of a live worker.
    memory_plans: list[tuple[str, str, str]] = field(default_factory=list)


def snapshot(session: Session, *, stalled_seconds: float) -> Snapshot:
    counts = task_counts(session)
    for metric, labels, value in session.execute(_BASELINES):
        counts[(metric, tuple(sorted(labels.items())))] += value
    loads, load_seconds = session.execute(_LOADS).one()
    fleet = fleet_view(session, stalled_seconds=stalled_seconds)  # what /admin/fleet shows
    return Snapshot(
        counts=dict(counts),
        queue_depth=[(q["kind"], q["model"], q["queued"]) for q in fleet["queues"] if q["queued"]],
        workers=dict(Counter(worker["state"] for worker in fleet["workers"])),
        model_loads=int(loads),
        model_load_seconds=float(load_seconds),
        gpu_memory=[tuple(row) for row in session.execute(_GPU, {"stalled": stalled_seconds})],
        memory_plans=[
            (worker["name"], model, plan)
            for worker in fleet["workers"]
            if worker["state"] in ("busy", "idle")
            for model, plan in sorted(worker["memory_plans"].items())
        ],
    )
