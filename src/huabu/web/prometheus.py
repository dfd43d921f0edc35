"""``GET /metrics``: Prometheus's text format, from ``prometheus-client``.

Two sources: the fleet's figures from the database (``tasks.metrics``: the same on every
server, so aggregate them with ``max`` across servers, not ``sum``), and this server's own
HTTP latency by route template (``huabu_http_request_seconds``; sum these across servers).
It needs an admin's credentials unless HUABU_METRICS_PUBLIC=true.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from huabu.errors import Forbidden
from huabu.tasks import metrics
from huabu.web.deps import current_user
from huabu.web.error_renderers import NativeError
from huabu.web.routing import GuardedRoute
from huabu.web.services import Services

router = APIRouter(route_class=GuardedRoute, tags=["operations"])

_HELP = {
    "huabu_tasks_submitted_total": "Tasks submitted, by kind and origin dialect",
    "huabu_tasks_finished_total": "Tasks finished, by kind and final state",
    "huabu_images_generated_total": "Images made by succeeded tasks",
    "huabu_task_queue_seconds": "Seconds from submit to the first run's start",
    "huabu_task_run_seconds": "Seconds from the (last) run's start to the end",
}


class FleetCollector(Collector):
    """The database's figures, read once per scrape."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        settings = self.services.settings
        with self.services.sessions() as session:
            snap = metrics.snapshot(session, stalled_seconds=settings.stalled_seconds)
        yield from _counters(snap.counts)
        yield from _histograms(snap.counts)
        depth = GaugeMetricFamily(
            "huabu_queue_depth", "Queued tasks, by kind and model", labels=["kind", "model"]
        )
        for kind, model, n in snap.queue_depth:
            depth.add_metric([kind, model], n)
        yield depth
        workers = GaugeMetricFamily(
            "huabu_workers", "Workers by state (stopped: in the last hour)", labels=["state"]
        )
        for state in ("busy", "idle", "silent", "stopped"):
            workers.add_metric([state], snap.workers.get(state, 0))
        yield workers
        yield CounterMetricFamily(
            "huabu_model_loads", "Checkpoints loaded by workers", value=snap.model_loads
        )
        yield CounterMetricFamily(
            "huabu_model_load_seconds",
            "Seconds workers spent loading checkpoints",
            value=snap.model_load_seconds,
        )
        if snap.gpu_memory:
            gpu = GaugeMetricFamily(
                "huabu_gpu_memory_bytes",
                "GPU memory allocated by torch, by live worker",
                labels=["worker", "device"],
            )
            for worker, device, used in snap.gpu_memory:
                gpu.add_metric([worker, device], used)
            yield gpu
        if snap.memory_plans:
            plans = GaugeMetricFamily(
                "huabu_memory_plan",
                "How each loaded flow model fits its worker's device (HUABU_QUANTIZE, "
                "HUABU_OFFLOAD): 1 for the plan in use",
                labels=["worker", "model", "plan"],
            )
            for worker, model, plan in snap.memory_plans:
                plans.add_metric([worker, model, plan], 1)
            yield plans


_LABELS = {
    "huabu_tasks_submitted_total": ["kind", "origin"],
    "huabu_tasks_finished_total": ["kind", "state"],
    "huabu_images_generated_total": [],
}


def _counters(counts: metrics.Counts) -> Iterator[Metric]:
    for name, names in _LABELS.items():
        family = CounterMetricFamily(name.removesuffix("_total"), _HELP[name], labels=names)
        rows = [
            (dict(labels), value) for (metric, labels), value in counts.items() if metric == name
        ]
        for labels, value in rows:
            family.add_metric([labels[k] for k in names], value)
        if not rows and not names:
            family.add_metric([], 0)
        yield family


def _histograms(counts: metrics.Counts) -> Iterator[Metric]:
    for name in ("huabu_task_queue_seconds", "huabu_task_run_seconds"):
        per_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"buckets": {}, "sum": 0.0})
        for (metric, labels), value in counts.items():
            kind = dict(labels).get("kind", "")
            if metric == f"{name}_bucket":
                per_kind[kind]["buckets"][dict(labels)["le"]] = value
            elif metric == f"{name}_sum":
                per_kind[kind]["sum"] = value
        family = HistogramMetricFamily(name, _HELP[name], labels=["kind"])
        for kind, data in sorted(per_kind.items()):
            order = [str(b) for b in metrics.BUCKETS] + ["+Inf"]
            family.add_metric(
                [kind], [(le, data["buckets"].get(le, 0)) for le in order], sum_value=data["sum"]
            )
        yield family


class Telemetry:
    """This server's registry: the fleet's figures and its own HTTP latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "huabu_http_request_seconds",
            "This server's HTTP request time, by method and route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )

    def watch(self, services: Services) -> None:
        self.registry.register(FleetCollector(services))


class RequestTimer:
    """ASGI middleware timing each HTTP request into ``huabu_http_request_seconds``, labelled
    with the route's template (``/huabu/v1/tasks/{task_id}``), never the raw path."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.telemetry.latency.labels(scope["method"], template).observe(
                time.perf_counter() - began
            )


@router.get(
    "/metrics",
    summary="Prometheus metrics (admins, or anyone with HUABU_METRICS_PUBLIC=true)",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
        403: {"model": NativeError, "description": "Not an admin"},
    },
)
async def metrics_page(request: Request) -> Response:
    services: Services = request.app.state.services
    if not services.settings.metrics_public:
        caller = await current_user(request, services)
        if not caller.is_admin:
            raise Forbidden("admins only: set HUABU_METRICS_PUBLIC=true to open /metrics")
    telemetry: Telemetry = request.app.state.telemetry
    body = await run_in_threadpool(generate_latest, telemetry.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
