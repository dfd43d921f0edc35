"""huabu as a fleet with no shared folder (issue 14): PostgreSQL as its own server over TCP,
moto's S3 server as the shared store (a stand-in for a real S3 service, see ``s3server``), an
API-only server whose HUABU_HOME is empty, and two workers with their own HUABU_HOMEs: the
first holds ``demo``, the second ``demo`` and ``demo-single`` and takes no training.

What a user would notice, checked: the API server lists what the workers hold; tasks succeed
once each and their images download through the API server; a checkpoint only one worker
holds runs only there; a killed worker's task runs again on the other; a LoRA trained on one
worker generates on the other after the first has stopped; a published checkpoint is served
by a worker that never had it; a task no live worker can serve says so (no ETA) instead of
pretending. (A database restart, killed connections and an outage: test_database_faults.)
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest
import requests
from PIL import Image

from huabu.auth import Accounts
from huabu.db.session import open_database
from huabu.settings import Settings
from pgserver import ExternalPostgres
from serving import HUABU, Server, Worker
from test_database_faults import _runs, _wait_all
from test_training_service import FOXES, TRAIN, png, upload, wait_trained

pytestmark = pytest.mark.slow

SMALL = {"width": 64, "height": 64, "steps": 6}


class Fleet:
    def __init__(self, root, home, s3) -> None:
        self.postgres = ExternalPostgres(root)
        self.homes = {name: root / name for name in ("api", "w1", "w2")}
        for path in self.homes.values():
            path.mkdir()
        held = {"w1": ["demo"], "w2": ["demo", "demo-single.safetensors"]}
        for name, models in held.items():
            (self.homes[name] / "models" / "checkpoints").mkdir(parents=True)
            for model in models:  # each worker's own library (read-only model files)
                target = self.homes[name] / "models" / "checkpoints" / model
                target.symlink_to(home / "models" / "checkpoints" / model)
        self.env = {
            "HUABU_DATABASE_URL": self.postgres.url,
            "HUABU_SECRET_KEY": "one-for-the-fleet",
        } | s3.env("fleet")
        self.api = Server(self.homes["api"], self.env | {"HUABU_WORKER": "false"})
        self.workers = {"w1": self.start("w1"), "w2": self.start("w2")}
        self.accounts = Accounts(
            open_database(Settings(home=self.homes["api"], database_url=self.postgres.url))
        )
        user = self.accounts.add_user("fleet@example.com", "password123")
        self.key = self.accounts.create_key(user.id)
        self.client = self.api.client(self.key)

    def start(self, name: str) -> Worker:
        extra = {"HUABU_WORKER_TRAINING": "false"} if name == "w2" else {}
        return Worker(self.homes[name], self.env | extra)

    def name_of(self, worker: str) -> str:
        """The worker's name in task_runs and the fleet view (host-pid)."""
        return f"{os.uname().nodename}-{self.workers[worker].process.pid}"

    def submit(self, **body) -> str:
        response = self.client.post("/huabu/v1/generations", json={"prompt": "a fox"} | body)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def wait_listed(self, name: str, present: bool = True, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = {m["name"] for m in self.client.get("/huabu/v1/models").json()["data"]}
            if (name in names) == present:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} {'never' if present else 'still'} listed")

    def stop(self) -> None:
        self.client.close()
        for process in (self.api, *self.workers.values()):
            process.stop()
        self.postgres.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, home, s3):
    fleet = Fleet(tmp_path_factory.mktemp("fleet"), home, s3)
    try:
        fleet.wait_listed("demo-single")
        yield fleet
    finally:
        fleet.stop()


def test_the_api_server_lists_what_the_workers_hold_in_every_dialect(fleet):
    assert not (fleet.homes["api"] / "models").exists()  # it has no model file at all
    client = fleet.client
    native = client.get("/huabu/v1/models").json()["data"]
    single = next(m for m in native if m["name"] == "demo-single")
    assert single["kind"] == "checkpoints" and single["architecture"] == "sd1"
    assert single["label"] == "SD 1.x"
    assert single["layout"] == "single-file" and single["size_bytes"] > 1_000_000
    assert "demo-single" in [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert "demo-single" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    novita = client.get("/v3/model", params={"filter.types": "checkpoint"}).json()["models"]
    assert "demo-single" in [m["sd_name"] for m in novita]
    kamiya = client.get("/api/image/config").json()["data"]["models"]
    assert "demo-single" in [m["name"] for m in kamiya]
    form = client.get("/api/v1b/get_generation_form").json()["info"]
    assert "demo-single" in next(f["choices"] for f in form if f["name"] == "model_name")
    # A model nobody holds is refused at submit, naming the field and what the fleet has.
    refused = client.post("/huabu/v1/generations", json={"prompt": "x", "model": "nope"})
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "model" and "demo-single" in error["message"]


def test_the_api_only_server_never_imports_torch_diffusers_or_opencv(fleet):
    script = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from huabu.app import create_app\n"
        "from huabu.settings import Settings\n"
        "with TestClient(create_app(Settings())) as client:\n"
        "    auth = {'Authorization': 'Bearer ' + sys.argv[1]}\n"
        "    assert client.get('/huabu/v1/models', headers=auth).status_code == 200\n"
        "    body = {'prompt': 'x', 'model': 'demo-single', 'width': 64, 'height': 64}\n"
        "    r = client.post('/huabu/v1/generations', json=body, headers=auth)\n"
        "    assert r.status_code == 202, r.text\n"
        "    client.post('/huabu/v1/tasks/' + r.json()['id'] + '/cancel', headers=auth)\n"
        "heavy = ('torch', 'diffusers', 'cv2', 'transformers')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    env = (
        os.environ
        | fleet.env
        | {
            "HUABU_HOME": str(fleet.homes["api"]),
            "HUABU_WORKER": "false",
            "HUABU_ALLOWED_HOSTS": '["testserver"]',
        }
    )
    result = subprocess.run(
        [sys.executable, "-c", script, fleet.key],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_thirty_tasks_succeed_once_each_and_a_checkpoint_runs_only_where_it_is(fleet):
    models = ["demo", "demo", "demo-single"] * 10
    ids = [fleet.submit(model=model, seed=n, **SMALL) for n, model in enumerate(models)]
    tasks = _wait_all(fleet.client, ids)
    assert [tasks[i]["state"] for i in ids] == ["succeeded"] * 30
    runs = _runs(fleet.postgres)
    assert all(len(runs[i]) == 1 and runs[i][0][4] == "succeeded" for i in ids)
    w2 = fleet.name_of("w2")
    single = [runs[i][0][1] for i, model in zip(ids, models, strict=True) if model == "demo-single"]
    assert single == [w2] * 10
    assert len({runs[i][0][1] for i in ids}) == 2  # both workers took work
    for task_id in ids[:6]:  # the images come through the API server, from the bucket
        [image] = tasks[task_id]["images"]
        download = httpx.get(image["url"], timeout=30)
        assert download.status_code == 200
        assert Image.open(io.BytesIO(download.content)).size == (64, 64)
    for name in ("api", "w1", "w2"):  # no machine kept an image of its own
        assert not any((fleet.homes[name] / "files").rglob("*.png"))


def test_an_upload_and_a_synchronous_dialect_go_through_the_bucket(fleet, s3):
    client = fleet.client
    source = Image.new("RGB", (64, 64), "teal")
    buffer = io.BytesIO()
    source.save(buffer, format="PNG")
    upload = client.post(
        "/huabu/v1/uploads", content=buffer.getvalue(), headers={"content-type": "image/png"}
    )
    assert upload.status_code == 201, upload.text
    task_id = fleet.submit(
        model="demo", init_image={"upload": upload.json()["id"]}, strength=0.5, **SMALL
    )
    task = _wait_all(client, [task_id])[task_id]
    assert task["state"] == "succeeded", task  # the worker read the upload from the bucket
    [image] = task["images"]
    download = httpx.get(image["url"], timeout=30)
    stored = [key for key in s3.keys("fleet/images/") if task_id in key]
    assert (
        stored
        and s3.client().get_object(Bucket=s3.bucket, Key=stored[0])["Body"].read()
        == download.content
    )
    # A synchronous dialect answers with the bytes from the bucket too.
    a1111 = client.post(
        "/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 4}
    )
    assert a1111.status_code == 200, a1111.text
    picture = Image.open(io.BytesIO(base64.b64decode(a1111.json()["images"][0])))
    assert picture.size == (64, 64)


def _running_on(fleet, task_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = _runs(fleet.postgres).get(task_id, [])
        if runs and runs[-1][3] is None:  # started, not ended
            return runs[-1][1]
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} never started")


def test_a_killed_workers_task_runs_again_on_the_other(fleet):
    task_id = fleet.submit(model="demo", width=128, height=128, steps=60, seed=3)
    worker = _running_on(fleet, task_id)
    victim = next(n for n in fleet.workers if fleet.name_of(n) == worker)
    fleet.workers[victim].kill()
    task = _wait_all(fleet.client, [task_id])[task_id]
    assert task["state"] == "succeeded" and task["attempts"] == 2
    runs = _runs(fleet.postgres)[task_id]
    assert [r[1] for r in runs][0] == worker and runs[-1][1] != worker
    assert runs[-1][4] == "succeeded"
    fleet.workers[victim] = fleet.start(victim)


def test_a_lora_trained_on_one_worker_generates_on_the_other_after_it_stopped(fleet):
    url = fleet.api.url + "/api/v1b/"
    fleet.accounts.add_user("trainer@example.com", "password123")
    login = {"email": "trainer@example.com", "password": "password123"}
    token = requests.post(url + "get_token", json=login).json()["token"]
    images = upload(url, token, [png(colour) for colour in FOXES])
    dataset = requests.post(
        url + "dataset", json={"token": token, "name": "d", "images": images}
    ).json()
    data = TRAIN | {"token": token, "name": "fleet fox", "dataset": [dataset["info"]["dataset_id"]]}
    task_id = requests.post(url + "train_submit", json=data).json()["info"]["task_id"]
    assert wait_trained(url, token, task_id)[-1]["state"] == "done"
    fleet.workers["w1"].stop()  # the one that trained it (w2 takes no training)
    body = {
        "token": token,
        "prompt": "in a field",
        "n_images": 1,
        "scale": 7,
        "output_size": "64x64",
        "select_seed": 7,
        "model_name": "fleet_fox",
    }
    response = requests.post(url + "task_submit", json=body)
    assert response.status_code == 200, response.text
    generated = response.json()["task_id"]
    for _ in range(600):
        result = requests.post(url + "task_result", json={"token": token, "task_id": generated})
        if result.json()["state"] != "pending":
            break
        time.sleep(0.1)
    assert result.json()["state"] == "done", result.json()
    with psycopg.connect(fleet.postgres.url) as connection:
        trainer, generator = (
            connection.execute(
                "SELECT r.worker FROM task_runs r JOIN tasks t ON t.id = r.task_id "
                "WHERE t.kind = %s ORDER BY r.started_at DESC LIMIT 1",
                (kind,),
            ).fetchone()[0]
            for kind in ("train", "generate")
        )
    assert generator == fleet.name_of("w2") and trainer != generator
    # w2 fetched the LoRA from the store into its cache, checked.
    cached = list((fleet.homes["w2"] / "cache" / "models").glob("*/fleet_fox.safetensors"))
    assert len(cached) == 1
    fleet.workers["w1"] = fleet.start("w1")


def test_a_task_no_live_worker_can_serve_waits_without_an_eta_then_runs(fleet):
    name = fleet.name_of("w2")
    fleet.workers["w2"].kill()  # the only holder of demo-single, gone without a word
    deadline = time.monotonic() + 30
    while True:  # until its last heartbeat is older than the stall limit (3 s in tests)
        with psycopg.connect(fleet.postgres.url) as connection:
            silent = connection.execute(
                "SELECT last_seen < now() - interval '3 seconds' FROM workers WHERE name = %s",
                (name,),
            ).fetchone()[0]
        if silent:
            break
        assert time.monotonic() < deadline, "the killed worker never went silent"
        time.sleep(0.2)
    task_id = fleet.submit(model="demo-single", **SMALL)
    queued = fleet.client.get(f"/huabu/v1/tasks/{task_id}").json()
    assert queued["state"] == "queued" and queued["eta_seconds"] is None
    fleet.workers["w2"] = fleet.start("w2")
    assert _wait_all(fleet.client, [task_id])[task_id]["state"] == "succeeded"


def test_a_published_checkpoint_runs_on_a_worker_that_never_had_it(fleet):
    env = os.environ | fleet.env | {"HUABU_HOME": str(fleet.homes["w2"])}
    published = subprocess.run(
        [*HUABU, "models", "publish", "demo-single"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published checkpoints/demo-single (")
    fleet.workers["w2"].stop()
    fleet.wait_listed("demo-single")  # still servable: it is in the store
    task_id = fleet.submit(model="demo-single", **SMALL)
    assert _wait_all(fleet.client, [task_id])[task_id]["state"] == "succeeded"
    assert _runs(fleet.postgres)[task_id][-1][1] == fleet.name_of("w1")
    cache = fleet.homes["w1"] / "cache" / "models"
    assert [p.name for p in cache.glob("*/*.safetensors")] == ["demo-single.safetensors"]
    fleet.workers["w2"] = fleet.start("w2")
    # Something that is not a model is refused in one line that says what was expected.
    notes = fleet.homes["w2"] / "notes.txt"
    notes.write_text("not a model")
    refused = subprocess.run(
        [*HUABU, "models", "publish", str(notes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: {notes} is not a model: expected a .safetensors file (or, with "
        "HUABU_ALLOW_PICKLE, .ckpt/.pt), or a diffusers folder with model_index.json"
    )
