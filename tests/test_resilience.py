"""What users of hosted APIs lose money over: tasks that vanish. Workers are SIGKILLed,
servers restarted, queues filled; every accepted task still ends in a final state."""

from __future__ import annotations

import io
import os
import signal
import time

import httpx
import pytest
from PIL import Image

from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.settings import Settings
from serving import Server, Worker, stop_embedded_postgres
from test_service import SLOW, SMALL, submit, wait_finished, wait_state

#: Long enough to be caught running and killed (seconds on one thread), short to re-run.
KILLABLE = SLOW | {"steps": 24}

pytestmark = pytest.mark.slow  # each test starts servers and workers of its own


@pytest.fixture
def fresh_home(tmp_path, home):
    (tmp_path / "models").symlink_to(home / "models")
    yield tmp_path
    stop_embedded_postgres(tmp_path)


def key_for(home, email: str = "user@example.com") -> str:
    accounts = Accounts(open_database(Settings(home=home)))
    return accounts.create_key(accounts.add_user(email, "password123").id)


def test_task_that_keeps_killing_workers_fails_with_a_reason(fresh_home):
    key = key_for(fresh_home)
    api = Server(fresh_home, {"HUABU_WORKER": "false", "HUABU_MAX_ATTEMPTS": "1"})
    try:
        client = api.client(key)
        task = submit(client, KILLABLE)
        worker = Worker(fresh_home, {"HUABU_MAX_ATTEMPTS": "1"})
        wait_state(client, task["id"], "running", timeout=90)
        worker.kill()
        survivor = Worker(fresh_home, {"HUABU_MAX_ATTEMPTS": "1"})
        try:
            failed = wait_finished(client, task["id"], timeout=120)
            # ...and the worker it failed on is fine: it runs the next task.
            after = wait_finished(client, submit(client, SMALL)["id"], timeout=60)
        finally:
            survivor.stop()
        assert failed["state"] == "failed"
        assert "stopped 1 times before it finished" in failed["error"]
        assert after["state"] == "succeeded"
    finally:
        api.stop()


def test_restart_loses_no_task(fresh_home):
    key = key_for(fresh_home)
    server = Server(fresh_home)
    client = server.client(key)
    # One task running when the server stops, one still queued behind it.
    ids = [submit(client, SLOW | {"steps": 16})["id"] for _ in range(2)]
    wait_state(client, ids[0], "running", timeout=90)
    # SIGTERM mid-task: a graceful stop (uvicorn re-raises the signal once it is done).
    assert server.stop() in (0, -signal.SIGTERM)
    interrupted = None
    restarted = Server(fresh_home)
    try:
        client = restarted.client(key)
        interrupted = client.get(f"/huabu/v1/tasks/{ids[0]}").json()
        finished = [wait_finished(client, task_id, timeout=120) for task_id in ids]
    finally:
        restarted.stop()
    assert interrupted["state"] in ("queued", "running", "succeeded")
    assert [task["state"] for task in finished] == ["succeeded"] * 2
    # A clean shutdown is not a crash: it does not count against the task's attempts.
    assert finished[0]["attempts"] == 1


def test_queue_limits_answer_429_with_retry_after(fresh_home):
    busy, other = key_for(fresh_home, "busy@example.com"), key_for(fresh_home, "other@x.org")
    server = Server(
        fresh_home,
        {"HUABU_WORKER": "false", "HUABU_MAX_QUEUED_PER_USER": "2", "HUABU_MAX_QUEUED": "3"},
    )
    try:
        with server.client(busy) as client:
            for _ in range(2):
                submit(client, SMALL)
            refused = client.post("/huabu/v1/generations", json=SMALL)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert "limit is 2" in refused.json()["error"]["message"]
            assert len(client.get("/huabu/v1/tasks").json()["data"]) == 2  # nothing half-made
        with server.client(other) as client:
            submit(client, SMALL)  # other users are not blocked by one user's backlog
            assert client.post("/huabu/v1/generations", json=SMALL).status_code == 429  # global
    finally:
        server.stop()


def test_anonymous_mode_serves_without_credentials(fresh_home):
    server = Server(fresh_home, {"HUABU_ANONYMOUS": "true"})
    try:
        task = submit(server.client(), SMALL)
        assert wait_finished(server.client(), task["id"])["state"] == "succeeded"
        with server.client(key_for(fresh_home)) as keyed:  # real users still see only theirs
            assert keyed.get(f"/huabu/v1/tasks/{task['id']}").status_code == 404
        # Health counts the worker inside: a count at most a second old (it is cached for a
        # second), so one taken before the worker had started may still show for that second.
        deadline = time.monotonic() + 5
        while httpx.get(server.url + "/huabu/v1/health").json()["workers"] != 1:
            assert time.monotonic() < deadline, "health never counted the worker"
            time.sleep(0.2)
    finally:
        server.stop()


def _queue_training(client: httpx.Client, steps: int) -> str:
    """A dataset of two images and a training on it, through the v1b routes (API key auth)."""
    files = [("init_img", (f"{i}.png", png)) for i, png in enumerate(_pngs())]
    links = client.post("/api/v1b/upload_imgs", files=files).json()["info"]
    dataset = client.post("/api/v1b/dataset", json={"name": "d", "images": links})
    body = {
        "name": "resilient",
        "base_model": "demo",
        "main_body": "Style",
        "nsfw": 0,
        "dataset": [dataset.json()["info"]["dataset_id"]],
        "steps": steps,
        "resolution": 64,
    }
    response = client.post("/api/v1b/train_submit", json=body)
    assert response.status_code == 200, response.text
    return response.json()["info"]["task_id"]


def _pngs() -> list[bytes]:
    out = []
    for colour in [(200, 10, 10), (10, 10, 200)]:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def test_training_goes_to_training_workers_and_survives_a_killed_one(fresh_home):
    key = key_for(fresh_home)
    api = Server(fresh_home, {"HUABU_WORKER": "false"})
    generator = Worker(fresh_home, {"HUABU_WORKER_TRAINING": "false"})
    trainers = []
    try:
        client = api.client(key)
        training = _queue_training(client, steps=60)
        # A worker that does not train leaves the training queued and still generates.
        assert wait_finished(client, submit(client, SMALL)["id"])["state"] == "succeeded"
        assert client.get(f"/huabu/v1/tasks/{training}").json()["state"] == "queued"
        trainers.append(Worker(fresh_home))
        deadline = time.monotonic() + 90
        while client.get(f"/huabu/v1/tasks/{training}").json()["progress"]["step"] == 0:
            assert time.monotonic() < deadline, "the training never started"
            time.sleep(0.1)
        trainers[0].kill()  # mid-training
        trainers.append(Worker(fresh_home))
        done = wait_finished(client, training, timeout=240)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 2
        assert done["kind"] == "train" and done["progress"]["percent"] == 100.0
        generated = client.post(
            "/api/v1b/task_submit",
            json={"model_name": "resilient", "prompt": "x", "n_images": 1, "output_size": "64x64"},
        )
        assert generated.status_code == 200, generated.text
    finally:
        for worker in [generator, *trainers[1:]]:
            worker.stop()
        api.stop()


def _postgres_running(home) -> bool:
    pid_file = home / "postgres" / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except ProcessLookupError:
        return False
    return True


def test_the_embedded_database_stops_with_the_server_and_is_adopted_after_a_crash(fresh_home):
    first = Server(fresh_home, {"HUABU_WORKER": "false"})
    assert _postgres_running(fresh_home)
    first.process.send_signal(signal.SIGINT)  # Ctrl-C
    first.process.wait(60)
    first.stop()
    assert not _postgres_running(fresh_home)
    crashed = Server(fresh_home, {"HUABU_WORKER": "false"})
    crashed.kill()
    assert _postgres_running(fresh_home)  # a crash leaves it behind…
    adopting = Server(fresh_home, {"HUABU_WORKER": "false"})  # …and the next start adopts it
    assert adopting.client().get("/huabu/v1/health").status_code == 200
    assert adopting.stop() in (0, -signal.SIGTERM)
    assert not _postgres_running(fresh_home)
