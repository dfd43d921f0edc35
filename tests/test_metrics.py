"""``/metrics`` (issue 17): Prometheus's own parser reads it, it is for admins only, and its
counters move when a task runs (the figures come from the database, so the worker inside the
shared server and any API-only server show the same fleet)."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from test_service import SMALL, client_for, submit, wait_finished


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_metrics_are_parsed_and_move_after_a_task(server, accounts):
    admin_user = accounts.add_user("metrics-admin@example.com", "password123", admin=True)
    admin = server.client(accounts.create_key(admin_user.id))
    user = client_for(accounts, server, "metrics-user@example.com")
    assert user.get("/metrics").status_code == 403
    assert httpx.get(server.url + "/metrics").status_code == 401

    before = scrape(admin)
    done = wait_finished(user, submit(user, SMALL | {"n_images": 2})["id"])
    assert done["state"] == "succeeded"
    user.get(f"/huabu/v1/tasks/{done['id']}")
    after = scrape(admin)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("huabu_tasks_submitted_total", kind="generate", origin="native") == 1
    assert moved("huabu_tasks_finished_total", kind="generate", state="succeeded") == 1
    assert moved("huabu_images_generated_total") == 2
    assert moved("huabu_task_run_seconds_count", kind="generate") == 1
    assert moved("huabu_task_run_seconds_bucket", kind="generate", le="+Inf") == 1
    assert moved("huabu_task_queue_seconds_count", kind="generate") == 1
    assert after[("huabu_task_run_seconds_sum", (("kind", "generate"),))] > 0
    assert (
        after[("huabu_workers", (("state", "idle"),))]
        + after[("huabu_workers", (("state", "busy"),))]
        >= 1
    )
    # Workers write their loads with their heartbeat: the checkpoint this one loaded shows.
    deadline = time.monotonic() + 20
    while scrape(admin)[("huabu_model_loads_total", ())] < 1:
        assert time.monotonic() < deadline, "the worker's checkpoint load never showed"
        time.sleep(0.2)
    # This server's own HTTP latency, by route template, never by raw path.
    polls = (
        "huabu_http_request_seconds_count",
        (("method", "GET"), ("route", "/huabu/v1/tasks/{task_id}")),
    )
    assert after[polls] >= 1
    assert not any(done["id"] in str(labels) for _, labels in after)
