"""Spec 001's training routes through real HTTP, with the docs' own `requests` calls: upload →
dataset → train → watch the progress → generate with the trained model by name. Cancelling a
training; refusing bad input with v1b errors; one user's datasets and models invisible to
another."""

from __future__ import annotations

import io
import time

import pytest
import requests
from PIL import Image

from helpers import max_difference

FOXES = [(250, 20, 20), (230, 60, 10), (240, 30, 70)]
TRAIN = {
    "description": "train model1 description",
    "base_model": "demo",
    "trigger_word": "sks fox",
    "main_body": "Animals",
    "nsfw": 0,
    # Beyond the spec: small and quick enough for a CPU test.
    "steps": 30,
    "resolution": 64,
    "learning_rate": 1e-3,
}
PROGRESS_KEYS = {"create_time", "description", "main_body", "model_name", "state",
                 "training_progress", "trigger_word", "base_model", "error_msg"}  # fmt: skip


def png(colour, size=(72, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def url(server):
    return server.url + "/api/v1b/"


def login(accounts, url, email) -> str:
    accounts.add_user(email, "password123")
    data = {"email": email, "password": "password123"}
    return requests.post(url + "get_token", json=data).json()["token"]


@pytest.fixture(scope="module")
def ada(accounts, url):
    return login(accounts, url, "ada-trains@example.com")


@pytest.fixture(scope="module")
def bob(accounts, url):
    return login(accounts, url, "bob-trains@example.com")


def upload(url, token, images) -> list[str]:
    # The upload_imgs snippet of the docs: files under init_img, the token as a file part.
    files = [("init_img", (f"pic{i}.png", data)) for i, data in enumerate(images)]
    files.append(("token", token))
    response = requests.post(url + "upload_imgs", files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0 and body["msg"] == ""
    return body["info"]


def error(response, status, param):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == status and body["param"] == param, body
    return body["msg"]


def progress(url, token, task_id):
    response = requests.post(url + "train_progress", json={"token": token, "task_id": task_id})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == PROGRESS_KEYS
    return body


def wait_trained(url, token, task_id, timeout=180) -> list[dict]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(progress(url, token, task_id))
        if seen[-1]["state"] not in ("pending", "running"):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"training {task_id} did not finish: {seen[-1]}")


def generate(url, token, **changes) -> Image.Image:
    data = {
        "token": token,
        "prompt": "in a field",
        "n_images": 1,
        "scale": 7,
        "output_size": "64x64",
        "select_seed": 7,
    } | changes
    response = requests.post(url + "task_submit", json=data)
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    for _ in range(600):
        body = requests.post(url + "task_result", json={"token": token, "task_id": task_id})
        body = body.json()
        if body["state"] != "pending":
            break
        time.sleep(0.1)
    assert body["state"] == "done", body
    return Image.open(io.BytesIO(requests.get(body["images"][0]["large"]).content))


@pytest.fixture(scope="module")
def dataset_id(url, ada):
    urls = upload(url, ada, [png(colour) for colour in FOXES])
    assert len(urls) == 3
    for link, colour in zip(urls, FOXES, strict=True):  # the links serve what was sent
        image = Image.open(io.BytesIO(requests.get(link).content))
        assert image.size == (72, 64) and image.getpixel((5, 5)) == colour
    # The dataset snippet of the docs.
    data = {"token": ada, "name": "dataset1", "description": "dataset1 description", "images": urls}
    response = requests.post(url + "dataset", json=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0 and body["msg"] == "" and isinstance(body["info"]["dataset_id"], int)
    return body["info"]["dataset_id"]


@pytest.fixture(scope="module")
def trained(url, ada, dataset_id):
    """'train model1', trained to the end; its progress as seen along the way."""
    data = TRAIN | {"token": ada, "name": "train model1", "dataset": [dataset_id]}
    response = requests.post(url + "train_submit", json=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0 and set(body["info"]) == {"task_id"}
    return body["info"]["task_id"], wait_trained(url, ada, body["info"]["task_id"])


def test_train_form_lists_the_servers_base_models(url):
    body = requests.get(url + "get_train_form").json()
    assert body["code"] == 0 and body["msg"] == ""
    assert {"demo", "demo-single"} <= set(body["info"]["base_model"])
    assert body["info"]["main_body"] == ["Style", "Human", "Architecture", "Plants", "Animals"]


def test_datasets_are_listed_with_their_images(url, ada, dataset_id):
    body = requests.post(url + "dataset_all", json={"token": ada}).json()
    assert {"items", "page", "per_page", "has_next", "has_prev", "totalPages"} == set(body)
    assert (body["page"], body["per_page"], body["has_next"], body["has_prev"]) == (
        1,
        20,
        False,
        False,
    )
    (item,) = [item for item in body["items"] if item["id"] == dataset_id]
    assert item["name"] == "dataset1" and item["description"] == "dataset1 description"
    assert item["images_num"] == 3 and item["demo_picture"] == item["images"][0]
    assert len(item["create_time"]) == len("2023-04-23 00:00:00")
    colours = [
        Image.open(io.BytesIO(requests.get(link).content)).getpixel((5, 5))
        for link in item["images"]
    ]
    assert colours == FOXES


def test_dataset_pages(url, accounts):
    token = login(accounts, url, "pages@example.com")
    (link,) = upload(url, token, [png((1, 2, 3))])
    for n in range(3):
        requests.post(url + "dataset", json={"token": token, "name": f"d{n}", "images": [link]})
    page = requests.post(url + "dataset_all", json={"token": token, "page": 2, "per_page": 2})
    body = page.json()
    assert [item["name"] for item in body["items"]] == ["d2"]
    assert (body["has_next"], body["has_prev"], body["totalPages"]) == (False, True, 2)


def test_training_progresses_to_done(trained):
    _, seen = trained
    final = seen[-1]
    assert final["state"] == "done" and final["training_progress"] == 1.0, final
    assert final["model_name"] == "train_model1"  # as the docs' example names it
    assert (final["trigger_word"], final["main_body"]) == ("sks fox", "Animals")
    assert final["description"] == "train model1 description" and final["error_msg"] == ""
    values = [body["training_progress"] for body in seen]
    assert values == sorted(values)  # it only ever rises


def test_the_trained_model_generates_by_name(url, ada, trained):
    with_lora = generate(url, ada, model_name="train_model1")
    base = generate(url, ada, model_name="demo", prompt="sks fox, in a field")
    again = generate(url, ada, model_name="demo", prompt="sks fox, in a field")
    assert max_difference(base, again) == 0  # same seed, same parameters: same image
    assert max_difference(base, with_lora) > 0  # the LoRA changed it


def test_the_trained_model_is_a_lora_in_the_native_api(server, ada, trained):
    headers = {"Authorization": f"Bearer {ada}"}

    def native(**changes):
        body = {
            "model": "demo",
            "prompt": "sks fox",
            "width": 64,
            "height": 64,
            "steps": 8,
            "seed": 3,
        } | changes
        response = requests.post(server.url + "/huabu/v1/generations", json=body, headers=headers)
        assert response.status_code == 202, response.text
        task_id = response.json()["id"]
        task = requests.get(server.url + f"/huabu/v1/tasks/{task_id}?wait=60", headers=headers)
        task = task.json()
        assert task["state"] == "succeeded", task
        image = requests.get(task["images"][0]["url"]).content
        return Image.open(io.BytesIO(image)), task["images"][0]["infotext"]

    plain, _ = native()
    with_lora, infotext = native(loras=[{"name": "train_model1", "weight": 0.8}])
    assert max_difference(plain, with_lora) > 0
    assert "LoRAs: train_model1:0.8" in infotext  # as its owner knows it, not its path


def test_a_taken_name_is_refused(url, ada, dataset_id, trained):
    data = TRAIN | {"token": ada, "name": "train_model1", "dataset": [dataset_id]}
    message = error(requests.post(url + "train_submit", json=data), 400, "name")
    assert "train_model1" in message
    data |= {"name": "demo"}  # a public checkpoint's name
    error(requests.post(url + "train_submit", json=data), 400, "name")


def test_bad_training_requests_name_the_field(url, ada, dataset_id):
    base = TRAIN | {"token": ada, "name": "never", "dataset": [dataset_id]}
    for changes, param in [
        ({"base_model": "nope"}, "base_model"),
        ({"dataset": [987654]}, "dataset"),
        ({"dataset": []}, "dataset"),
        ({"main_body": "Food"}, "main_body"),
        ({"name": "   "}, "name"),
        ({"steps": 10**6}, "steps"),
    ]:
        error(requests.post(url + "train_submit", json=base | changes), 400, param)
    response = requests.post(url + "train_submit", json=base | {"token": "nope"})
    assert response.status_code == 401


def test_bad_uploads_and_datasets_are_refused_and_nothing_is_kept(url, ada, service_home):
    uploads = service_home / "files" / "uploads"
    before = set(uploads.glob("*"))
    files = [
        ("init_img", ("a.png", png((1, 1, 1)))),
        ("init_img", ("b.txt", b"not an image")),
        ("token", ada),
    ]
    assert "init_img" in error(requests.post(url + "upload_imgs", files=files), 400, "init_img.1")
    huge = io.BytesIO()
    Image.new("L", (5000, 4000)).save(huge, format="PNG")  # 20 MP, over the 16.7 MP cap
    files = [("init_img", ("huge.png", huge.getvalue())), ("token", ada)]
    error(requests.post(url + "upload_imgs", files=files), 400, "init_img")
    error(requests.post(url + "upload_imgs", files=[("token", ada)]), 400, "init_img")
    assert set(uploads.glob("*")) == before
    empty = {"token": ada, "name": "empty", "images": []}
    error(requests.post(url + "dataset", json=empty), 400, "images")
    broken = {"token": ada, "name": "broken", "images": ["http://127.0.0.1:1/x.png"]}
    error(requests.post(url + "dataset", json=broken), 400, "images.0")


def test_another_user_sees_and_uses_nothing(url, ada, bob, dataset_id, trained):
    task_id, _ = trained
    assert requests.post(url + "dataset_all", json={"token": bob}).json()["items"] == []
    data = TRAIN | {"token": bob, "name": "stolen", "dataset": [dataset_id]}
    error(requests.post(url + "train_submit", json=data), 400, "dataset")
    response = requests.post(url + "train_progress", json={"token": bob, "task_id": task_id})
    assert response.status_code == 404
    submit = {
        "token": bob,
        "model_name": "train_model1",
        "prompt": "x",
        "n_images": 1,
        "scale": 7,
        "output_size": "64x64",
    }
    error(requests.post(url + "task_submit", json=submit), 400, "model_name")
    ada_id = requests.get(
        url.replace("/api/v1b/", "/huabu/v1/me"), headers={"Authorization": f"Bearer {ada}"}
    ).json()["id"]
    for name in ("train_model1", f"@{ada_id.replace('-', '')}/train_model1"):
        body = {
            "model": "demo",
            "prompt": "x",
            "width": 64,
            "height": 64,
            "steps": 2,
            "loras": [{"name": name}],
        }
        response = requests.post(
            url.replace("/api/v1b/", "/huabu/v1/generations"),
            json=body,
            headers={"Authorization": f"Bearer {bob}"},
        )
        assert response.status_code == 400 and response.json()["error"]["param"] == "loras.0.name"


def test_cancel_a_training(server, url, ada, dataset_id, service_home):
    data = TRAIN | {"token": ada, "name": "cancelled one", "dataset": [dataset_id], "steps": 5000}
    task_id = requests.post(url + "train_submit", json=data).json()["info"]["task_id"]
    deadline = time.monotonic() + 120
    while (now := progress(url, ada, task_id))["training_progress"] == 0:
        assert time.monotonic() < deadline and now["state"] in ("pending", "running"), now
        time.sleep(0.05)
    assert now["state"] == "running"
    headers = {"Authorization": f"Bearer {ada}"}
    response = requests.post(server.url + f"/huabu/v1/tasks/{task_id}/cancel", headers=headers)
    assert response.status_code == 200
    final = wait_trained(url, ada, task_id, timeout=30)[-1]
    assert final["state"] == "cancelled" and final["training_progress"] < 1
    assert final["error_msg"]
    assert not list((service_home / "models" / "loras").glob("@*/cancelled_one.*"))
    # The name is free again.
    data |= {"steps": 5}
    task_id = requests.post(url + "train_submit", json=data).json()["info"]["task_id"]
    assert wait_trained(url, ada, task_id)[-1]["state"] == "done"
    assert list((service_home / "models" / "loras").glob("@*/cancelled_one.safetensors"))


def test_owners_delete_datasets_and_trained_models(
    server, url, ada, bob, dataset_id, trained, service_home
):
    """Through the native routes: another user's are not found; a deleted trained model is
    unusable at once, its name free, its published files gone from the store."""
    headers = {"Authorization": f"Bearer {ada}"}
    native = server.url + "/huabu/v1"
    listed = requests.get(native + "/trained-models", headers=headers).json()
    assert "train_model1" in listed
    bobs = {"Authorization": f"Bearer {bob}"}
    assert requests.delete(native + "/trained-models/train_model1", headers=bobs).status_code == 404
    assert requests.delete(native + f"/datasets/{dataset_id}", headers=bobs).status_code == 404

    from sqlalchemy import text

    from huabu.db.session import open_database
    from huabu.settings import Settings

    sessions = open_database(Settings(home=service_home))
    query = text("SELECT files FROM models WHERE kind = 'loras' AND name LIKE '%/train_model1'")
    with sessions() as session:
        blobs = [item["sha256"] for files in session.execute(query).scalars() for item in files]
    assert blobs  # published when its training succeeded
    stored = service_home / "files" / "models"
    assert all((stored / f"{digest}.blob").exists() for digest in blobs)

    assert (
        requests.delete(native + "/trained-models/train_model1", headers=headers).status_code == 204
    )
    assert "train_model1" not in requests.get(native + "/trained-models", headers=headers).json()
    body = {
        "model": "demo",
        "prompt": "x",
        "width": 64,
        "height": 64,
        "steps": 2,
        "loras": [{"name": "train_model1"}],
    }
    refused = requests.post(native + "/generations", json=body, headers=headers)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "loras.0.name"
    assert not any((stored / f"{digest}.blob").exists() for digest in blobs)
    assert not list((service_home / "models" / "loras").glob("@*/train_model1.*"))

    before = requests.get(native + "/datasets", headers=headers).json()
    assert dataset_id in [d["id"] for d in before["data"]]
    assert requests.delete(native + f"/datasets/{dataset_id}", headers=headers).status_code == 204
    after = requests.get(native + "/datasets", headers=headers).json()
    assert dataset_id not in [d["id"] for d in after["data"]]
    assert after["total"] == before["total"] - 1
    items = requests.post(url + "dataset_all", json={"token": ada}).json()["items"]
    assert dataset_id not in [item["id"] for item in items]  # v1b's listing too


def test_native_training_refusals_name_the_field(server, accounts):
    from test_service import client_for

    client = client_for(accounts, server, "native-trainer@example.com")
    other = client_for(accounts, server, "native-other@example.com")
    theirs = other.post("/huabu/v1/uploads", files={"file": ("a.png", png((1, 2, 3)))}).json()
    refused = client.post("/huabu/v1/datasets", json={"name": "x", "images": [theirs["id"]]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "images.0"  # not an upload of theirs
    mine = client.post("/huabu/v1/uploads", files={"file": ("b.png", png((9, 9, 9)))}).json()
    dataset = client.post("/huabu/v1/datasets", json={"name": "mine", "images": [mine["id"]]})
    assert dataset.status_code == 201, dataset.text
    body = {"name": "n", "datasets": [dataset.json()["id"]], "base_model": "no-such-model"}
    wrong = client.post("/huabu/v1/trainings", json=body)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "base_model"
    wrong = client.post("/huabu/v1/trainings", json=body | {"base_model": "demo", "steps": 10**6})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "steps"
    listed = client.get("/huabu/v1/tasks").json()["data"]
    assert listed == []  # nothing was queued
