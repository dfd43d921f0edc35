"""huabu on an external PostgreSQL (its own server process, reached over TCP with a password),
with an API-only server and two workers that share no folder (files in moto's S3 server), while
the database restarts, its connections are killed, and it goes away for longer than the
workers' stall limit.

What a user would notice, checked: every task succeeds, exactly once, and no two runs of a
task overlap (``task_runs`` records which worker ran each attempt, and when); while the
database is away the API answers 503 with ``Retry-After`` and says why, and ``/health`` says
the database is unreachable; no process exits and none logs a traceback (conftest).
"""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import psycopg
import pytest

from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.settings import Settings
from pgserver import ExternalPostgres
from serving import HUABU, Process, Server, Worker

pytestmark = pytest.mark.slow

#: Longer than the stall limit of the test processes (3 s, serving.FAST): other workers
#: presume the silent ones dead while the database is away.
OUTAGE_SECONDS = 6
#: Long enough that tasks are running when the database goes away.
TASK = {"model": "demo", "prompt": "a lighthouse", "width": 128, "height": 128, "steps": 40}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, home, s3):
    """No shared folder: each process has its own HUABU_HOME (the API server's is empty, each
    worker has the demo models), files live in the bucket (moto, see ``s3server``)."""
    root = tmp_path_factory.mktemp("external-pg")
    postgres = ExternalPostgres(root)
    homes = [root / name for name in ("api", "w1", "w2")]
    for path in homes:
        path.mkdir()
    for path in homes[1:]:
        (path / "models").symlink_to(home / "models")
    env = {"HUABU_DATABASE_URL": postgres.url, "HUABU_SECRET_KEY": "faults"} | s3.env("faults")
    api = Server(homes[0], env | {"HUABU_WORKER": "false"})
    workers = [Worker(path, env) for path in homes[1:]]
    accounts = Accounts(open_database(Settings(home=homes[0], database_url=postgres.url)))
    user = accounts.add_user("fleet@example.com", "password123")
    client = api.client(accounts.create_key(user.id))
    admin = accounts.add_user("admin@example.com", "password123", admin=True)
    client.admin = api.client(accounts.create_key(admin.id))  # type: ignore[attr-defined]
    # What another worker of this fleet needs: the environment, and a home with models.
    client.env, client.worker_home = env, homes[1]  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60  # until the workers have said what they hold
    while "demo" not in str(client.get("/huabu/v1/models").json()):
        assert time.monotonic() < deadline, "the workers never advertised their models"
        time.sleep(0.2)
    yield postgres, api, workers, client
    client.admin.close()  # type: ignore[attr-defined]
    client.close()
    for process in (api, *workers):
        process.stop()
    postgres.stop()


def _runs(postgres: ExternalPostgres) -> dict[str, list[tuple]]:
    with psycopg.connect(postgres.url) as connection:
        rows = connection.execute(
            "SELECT task_id::text, run, worker, started_at, ended_at, outcome "
            "FROM task_runs ORDER BY task_id, run"
        ).fetchall()
    runs: dict[str, list[tuple]] = {}
    for task_id, *run in rows:
        runs.setdefault(task_id, []).append(tuple(run))
    return runs


def _wait_all(client: httpx.Client, ids: list[str], timeout: float = 300) -> dict[str, dict]:
    deadline, tasks = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        for task_id in ids:
            if task_id in tasks:
                continue
            response = client.get(f"/huabu/v1/tasks/{task_id}")
            if response.status_code == 200 and response.json()["state"] in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                tasks[task_id] = response.json()
        if len(tasks) == len(ids):
            return tasks
        time.sleep(0.5)
    raise AssertionError(f"unfinished: {set(ids) - set(tasks)}")


def _submit(client: httpx.Client, count: int) -> list[str]:
    ids = []
    for index in range(count):
        response = client.post("/huabu/v1/generations", json=TASK | {"seed": index})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def _wait_running(client: httpx.Client, ids: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [client.get(f"/huabu/v1/tasks/{i}").json()["state"] for i in ids]
        if "running" in states:
            return
        time.sleep(0.1)
    raise AssertionError("no task started")


def _assert_once_each(postgres, tasks: dict[str, dict]) -> None:
    assert {task["state"] for task in tasks.values()} == {"succeeded"}, [
        (task["id"], task["state"], task.get("error")) for task in tasks.values()
    ]
    runs = _runs(postgres)
    for task_id in tasks:
        attempts = runs[task_id]
        assert [run[4] for run in attempts].count("succeeded") == 1, attempts
        for earlier, later in zip(attempts, attempts[1:], strict=False):
            # A run ends (or is stopped) before the next one of the same task starts.
            assert earlier[3] is not None and earlier[3] <= later[2], attempts


def test_a_restart_and_killed_connections_lose_nothing(fleet):
    postgres, api, workers, client = fleet
    ids = _submit(client, 8)
    _wait_running(client, ids)
    postgres.stop()  # a restart: every connection is cut
    postgres.start()
    deadline = time.monotonic() + 30  # then kill the connections huabu made again
    while postgres.terminate_huabu_connections() == 0:
        assert time.monotonic() < deadline, "huabu did not reconnect after the restart"
        time.sleep(0.1)
    _assert_once_each(postgres, _wait_all(client, ids))
    assert all(process.alive() for process in (api, *workers))


def test_an_outage_longer_than_the_stall_limit_runs_nothing_twice(fleet):
    postgres, api, workers, client = fleet
    ids = _submit(client, 8)
    _wait_running(client, ids)
    postgres.stop()
    try:
        away = client.get(f"/huabu/v1/tasks/{ids[0]}")
        assert away.status_code == 503, away.text
        assert "database" in away.json()["error"]["message"]
        assert int(away.headers["Retry-After"]) > 0
        health = httpx.get(api.url + "/huabu/v1/health", timeout=30)
        assert health.status_code == 503 and health.json()["database"] == "unreachable"
        time.sleep(OUTAGE_SECONDS)  # the scenario itself: the database stays away this long
    finally:
        postgres.start()
    tasks = _wait_all(client, ids)
    _assert_once_each(postgres, tasks)
    assert httpx.get(api.url + "/huabu/v1/health").json()["database"] == "ok"
    assert all(process.alive() for process in (api, *workers))
    outcomes = {run[4] for runs in _runs(postgres).values() for run in runs}
    assert outcomes & {"abandoned", "worker lost"}, outcomes  # the outage did stop runs


def test_a_worker_started_while_the_database_is_away_waits_for_it(fleet):
    postgres, api, _, client = fleet
    postgres.stop()
    try:
        late = Worker(client.worker_home, client.env)
        deadline = time.monotonic() + 30
        while "waiting for the database" not in late.output() and time.monotonic() < deadline:
            assert late.alive(), late.output()[-2000:]
            time.sleep(0.2)
        assert "waiting for the database" in late.output()
    finally:
        postgres.start()
    try:
        deadline = time.monotonic() + 60
        while "started" not in late.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert late.alive() and "started" in late.output(), late.output()[-2000:]
        [task_id] = _submit(client, 1)
        assert _wait_all(client, [task_id])[task_id]["state"] == "succeeded"
    finally:
        late.stop()


def test_a_role_that_may_not_create_tables_is_told_what_to_grant(fleet, tmp_path):
    postgres = fleet[0]
    with postgres.admin() as connection:
        connection.execute("CREATE ROLE guest LOGIN PASSWORD 'guest'")
        connection.execute("CREATE DATABASE elsewhere")  # owned by postgres, not by guest
    url = f"postgresql://guest:guest@127.0.0.1:{postgres.port}/elsewhere"
    result = subprocess.run(
        [*HUABU, "users", "add", "someone@example.com", "--password", "password123"],
        env=os.environ | {"HUABU_HOME": str(tmp_path), "HUABU_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "GRANT CREATE ON SCHEMA public TO guest" in lines[0], lines


def _fleet_until(client, accept, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        view = client.admin.get("/huabu/v1/admin/fleet").json()
        if accept(view) or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def test_the_fleet_view_shows_every_worker_and_queue(fleet):
    postgres, api, workers, client = fleet
    refused = client.get("/huabu/v1/admin/fleet")
    assert refused.status_code == 403 and "admins only" in refused.json()["error"]["message"]
    pids = {str(worker.process.pid) for worker in workers}

    def live(view):
        return [w for w in view["workers"] if w["state"] in ("busy", "idle")]

    view = _fleet_until(client, lambda v: {w["name"].rsplit("-", 1)[1] for w in live(v)} >= pids)
    assert {w["name"].rsplit("-", 1)[1] for w in live(view)} >= pids, view  # both advertise
    assert all(w["device"] == "cpu" and w["kinds"] == ["generate", "train"] for w in live(view))
    ids = _submit(client, 6)
    view = _fleet_until(client, lambda v: any(w["current_task"] in ids for w in live(v)))
    assert any(w["state"] == "busy" and w["current_task"] in ids for w in live(view)), view
    [queue] = [q for q in view["queues"] if q["model"] == "demo"]
    assert queue["kind"] == "generate" and queue["queued"] + queue["running"] >= 1
    _wait_all(client, ids)

    def mine(view):
        return [w for w in view["workers"] if w["name"].rsplit("-", 1)[1] in pids]

    # The next heartbeats say what is loaded and that nothing runs.
    view = _fleet_until(client, lambda v: all(w["state"] == "idle" for w in mine(v)))
    mine = mine(view)
    assert all(w["state"] == "idle" and "demo" in w["loaded"] for w in mine), mine
    assert sum(w["tasks_done"] for w in mine) >= len(ids)
    assert view["queues"] == [] and view["oldest_queued_seconds"] is None
    # The same from the command line.
    result = subprocess.run(
        [*HUABU, "status"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"HUABU_HOME": str(api.log.parent), "HUABU_DATABASE_URL": postgres.url},
    )
    assert result.returncode == 0, result.stderr
    assert all(w["name"] in result.stdout for w in mine) and "nothing queued" in result.stdout


def test_one_worker_per_device_from_one_command(fleet):
    postgres, api, workers, client = fleet
    before = {w["name"] for w in client.admin.get("/huabu/v1/admin/fleet").json()["workers"]}
    others = {str(worker.process.pid) for worker in workers}

    def launched(view):
        return [
            w
            for w in view["workers"]
            if w["name"] not in before and w["name"].rsplit("-", 1)[1] not in others
        ]

    launcher = Process(
        ["worker", "--devices", "cpu,cpu"],
        client.worker_home,
        client.env,
        client.worker_home / "devices.log",
    )
    try:
        view = _fleet_until(
            client, lambda v: len([w for w in launched(v) if w["state"] == "idle"]) >= 2
        )
        assert len(launched(view)) == 2, view
        assert all(w["device"] == "cpu" for w in launched(view)), view
        [task_id] = _submit(client, 1)
        assert _wait_all(client, [task_id])[task_id]["state"] == "succeeded"
    finally:
        assert launcher.stop() == 0
    view = _fleet_until(client, lambda v: all(w["state"] == "stopped" for w in launched(v)))
    assert [w["state"] for w in launched(view)] == ["stopped", "stopped"], view
