"""Fleet benchmark: routing by model against plain first-come order, and one worker against two.

    .venv/bin/python bench/fleet.py [--tasks 40] [--steps 8]

Two checkpoints (``demo`` and ``demo-single``: the same tiny weights, two models to load), 40
requests interleaved A B A B …, queued on an API-only server before the workers start. Every
worker holds both checkpoints and keeps one loaded (HUABU_PIPELINE_CACHE_SIZE=1: a GPU that
fits one checkpoint), and the counts of checkpoint loads come from the fleet view.

(1) Checkpoint loads per worker, two workers: routing (the default) against plain first-come
    order (HUABU_MAX_PASS_OVER_SECONDS=0: always the oldest job). Goal: no more than one load
    per checkpoint per worker with routing.
(2) Tasks per second, first start to last finish: one worker against two (routing).
The API server, the workers and PostgreSQL share this machine's cores (each worker 1 thread).
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from huabu import demos  # noqa: E402
from huabu.auth import Accounts  # noqa: E402
from huabu.db.session import open_database  # noqa: E402
from huabu.settings import Settings  # noqa: E402
from serving import Server, Worker, stop_embedded_postgres  # noqa: E402

MODELS = ("demo", "demo-single")


def run(home: Path, client, admin, *, workers: int, env: dict, tasks: int, steps: int) -> dict:
    ids = []
    for n in range(tasks):
        body = {
            "model": MODELS[n % 2],
            "prompt": "a fox",
            "width": 64,
            "height": 64,
            "steps": steps,
            "seed": n,
        }
        response = client.post("/huabu/v1/generations", json=body)
        response.raise_for_status()
        ids.append(response.json()["id"])
    started = [
        Worker(home, {"HUABU_PIPELINE_CACHE_SIZE": "1", "HUABU_THREADS": "1"} | env)
        for _ in range(workers)
    ]
    try:
        records = {}
        deadline = time.monotonic() + 1800
        while len(records) < len(ids) and time.monotonic() < deadline:
            for task_id in ids:
                if task_id not in records:
                    task = client.get(f"/huabu/v1/tasks/{task_id}", params={"wait": 5}).json()
                    if task["state"] not in ("queued", "running"):
                        records[task_id] = task
        assert all(t["state"] == "succeeded" for t in records.values()), "a task failed"
        names = {f"{socket.gethostname()}-{w.process.pid}" for w in started}
        time.sleep(2.5)  # one more advert after the last task
        fleet = admin.get("/huabu/v1/admin/fleet").json()["workers"]
        loads = {w["name"]: w["checkpoint_loads"] for w in fleet if w["name"] in names}
    finally:
        for worker in started:
            worker.stop()
    first = min(datetime.fromisoformat(t["started_at"]) for t in records.values())
    last = max(datetime.fromisoformat(t["finished_at"]) for t in records.values())
    return {"loads": loads, "seconds": (last - first).total_seconds()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        demos.build(Settings(home=home))
        api = Server(home, {"HUABU_WORKER": "false"})
        accounts = Accounts(open_database(Settings(home=home)))
        user = accounts.add_user("bench@example.com", "password123", admin=True)
        key = accounts.create_key(user.id)
        client = admin = api.client(key)
        try:
            common = {"tasks": args.tasks, "steps": args.steps}
            plain = run(
                home, client, admin, workers=2, env={"HUABU_MAX_PASS_OVER_SECONDS": "0"}, **common
            )
            routed = run(home, client, admin, workers=2, env={}, **common)
            alone = run(home, client, admin, workers=1, env={}, **common)
        finally:
            client.close()
            api.stop()
            stop_embedded_postgres(home)
    print(
        f"{args.tasks} requests, {MODELS[0]} and {MODELS[1]} interleaved, "
        f"{args.steps} steps at 64x64, one checkpoint loaded per worker"
    )
    for label, result in (("first-come order", plain), ("routing by model", routed)):
        loads = sorted(result["loads"].values())
        print(
            f"  {label:18} checkpoint loads per worker {loads} (total {sum(loads)}), "
            f"{args.tasks / result['seconds']:.2f} tasks/s"
        )
    print(
        f"  loads, routing / first-come: {sum(routed['loads'].values())} / "
        f"{sum(plain['loads'].values())}; goal: at most {len(MODELS)} per worker"
    )
    one, two = args.tasks / alone["seconds"], args.tasks / routed["seconds"]
    print(
        f"  tasks/s: one worker {one:.2f}, two workers {two:.2f} (x{two / one:.2f}; "
        f"this machine has {os.cpu_count()} cores for both)"
    )


if __name__ == "__main__":
    main()
