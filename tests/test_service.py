"""The service end to end: a real `huabu serve` (worker inside) over real HTTP, on the
embedded PostgreSQL, generating with the demo model."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import pytest
from PIL import Image

from helpers import max_difference, png_bytes
from huabu.auth import Accounts
from huabu.auth.administration import Administration
from huabu.catalog.infotext import parse_infotext, read_parameters
from serving import Server

SMALL = {"model": "demo", "prompt": "a red fox", "width": 64, "height": 64, "steps": 8}
#: Long enough (a few seconds on one CPU thread) to be caught queued or running.
SLOW = SMALL | {"width": 256, "height": 256, "steps": 60}


def step_aside(client: httpx.Client, blocker: dict) -> None:
    """Cancel a task that held the worker while a test queued the ones behind it: they start
    at once instead of after its remaining steps."""
    assert client.post(f"/huabu/v1/tasks/{blocker['id']}/cancel").status_code == 200


def client_for(accounts: Accounts, server: Server, email: str) -> httpx.Client:
    user = accounts.add_user(email, "password123")
    return server.client(accounts.create_key(user.id))


@pytest.fixture(scope="session")
def alice(accounts, server):
    return client_for(accounts, server, "alice@example.com")


@pytest.fixture(scope="session")
def bob(accounts, server):
    return client_for(accounts, server, "bob@example.com")


def submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/huabu/v1/generations", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def wait_finished(client: httpx.Client, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/huabu/v1/tasks/{task_id}", params={"wait": 10}).json()
        if task["state"] in ("succeeded", "failed", "cancelled"):
            return task
    raise AssertionError(f"task {task_id} did not finish: {task}")


def wait_state(client: httpx.Client, task_id: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = client.get(f"/huabu/v1/tasks/{task_id}").json()
        if task["state"] == state:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} never became {state}: {task}")


def settled(client: httpx.Client, task_id: str, check, timeout: float = 5) -> dict:
    """The task once ``check`` holds for it (within ``timeout`` s, else the test fails)."""
    deadline = time.monotonic() + timeout
    while True:
        task = client.get(f"/huabu/v1/tasks/{task_id}").json()
        if check(task):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def test_submit_poll_download(alice):
    queued = submit(alice, SMALL | {"n_images": 2, "seed": 77})
    assert queued["state"] == "queued" and queued["request"]["seed"] == 77
    task = wait_finished(alice, queued["id"])
    assert task["state"] == "succeeded", task
    assert task["progress"] == {"step": 8, "total": 8, "percent": 100.0}
    assert [image["seed"] for image in task["images"]] == [77, 78]
    for image in task["images"]:
        response = httpx.get(image["url"])  # signed: no credentials needed
        assert response.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(response.content))
        assert picture.size == (64, 64)
        assert parse_infotext(read_parameters(picture))["Seed"] == str(image["seed"])
        preview = httpx.get(image["preview_url"])
        assert preview.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(preview.content)).size == (64, 64)  # never upscaled


def test_output_format_and_preview_size(alice):
    task = wait_finished(alice, submit(alice, SLOW | {"steps": 2, "output_format": "webp"})["id"])
    image = task["images"][0]
    response = httpx.get(image["url"])
    assert response.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(response.content)).size == (256, 256)
    preview = Image.open(io.BytesIO(httpx.get(image["preview_url"]).content))
    assert max(preview.size) == 256 and preview.format == "JPEG"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"width": 65}, "width"),
        ({"steps": 0}, "steps"),
        ({"model": "no-such-model"}, "model"),
        ({"sampler": "Euler z"}, "sampler"),
        ({"colour": "red"}, "colour"),
        ({"init_image": "not-an-upload"}, "init_image"),
    ],
)
def test_bad_requests_name_the_field_and_queue_nothing(alice, change, param):
    def task_ids():
        tasks = alice.get("/huabu/v1/tasks", params={"limit": 100}).json()["data"]
        return [task["id"] for task in tasks]

    before = task_ids()
    response = alice.post("/huabu/v1/generations", json=SMALL | change)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["param"] == param
    assert param in error["message"] and "Traceback" not in response.text
    # Ids, not whole tasks: signed image URLs carry an expiry that moves with the clock.
    assert task_ids() == before


def test_malformed_json_is_a_400(alice):
    response = alice.post(
        "/huabu/v1/generations", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the request body is not valid JSON"


def test_credentials_are_required(server, accounts):
    with server.client() as anonymous:
        response = anonymous.post("/huabu/v1/generations", json=SMALL)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    with server.client("hb_aaaaaaaaaaaa_" + "x" * 43) as forged:
        assert forged.get("/huabu/v1/tasks").status_code == 401


def test_revoked_key_is_refused(server, accounts):
    user = accounts.add_user("revoked@example.com", "password123")
    key = accounts.create_key(user.id)
    accounts.revoke_key(key)
    with server.client(key) as client:
        assert client.get("/huabu/v1/me").status_code == 401


def test_login_session_and_logout(server, accounts):
    accounts.add_user("carol@example.com", "correct horse")
    with server.client() as client:
        wrong = client.post(
            "/huabu/v1/sessions", json={"email": "carol@example.com", "password": "nope nope"}
        )
        assert wrong.status_code == 401
        login = client.post(
            "/huabu/v1/sessions", json={"email": "Carol@Example.com", "password": "correct horse"}
        )
        assert login.status_code == 201
        token = login.json()["token"]
    with server.client(token) as client:
        assert client.get("/huabu/v1/me").json()["email"] == "carol@example.com"
        assert client.delete("/huabu/v1/sessions/current").status_code == 204
        assert client.get("/huabu/v1/me").status_code == 401


def test_users_cannot_see_each_others_tasks_or_images(alice, bob):
    task = wait_finished(alice, submit(alice, SMALL)["id"])
    path = f"/huabu/v1/tasks/{task['id']}"
    for response in (
        bob.get(path),
        bob.post(path + "/cancel"),
        bob.get(path + "/events"),
    ):
        assert response.status_code == 404  # not 403: ids do not leak
        assert response.json()["error"]["type"] == "not_found"
    assert task["id"] not in {t["id"] for t in bob.get("/huabu/v1/tasks").json()["data"]}
    url = task["images"][0]["url"]
    assert httpx.get(url).status_code == 200
    tampered = url.replace(task["id"], bob.get("/huabu/v1/me").json()["id"])
    assert httpx.get(tampered).status_code == 404
    unsigned = url.split("?")[0]
    assert httpx.get(unsigned).status_code == 404


def test_upload_and_img2img(alice, bob):
    source = Image.new("RGB", (96, 64), (200, 30, 30))
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG")
    upload = alice.post("/huabu/v1/uploads", files={"file": ("red.jpg", buffer.getvalue())})
    assert upload.status_code == 201, upload.text
    assert upload.json()["width"] == 96 and upload.json()["content_type"] == "image/jpeg"
    body = SMALL | {"init_image": upload.json()["id"], "strength": 0.5, "width": 96, "seed": 5}
    task = wait_finished(alice, submit(alice, body)["id"])
    assert task["state"] == "succeeded", task
    image = Image.open(io.BytesIO(httpx.get(task["images"][0]["url"]).content))
    assert image.size == (96, 64)
    # The source image was used: the same seed without it gives another picture.
    plain = wait_finished(alice, submit(alice, body | {"init_image": None})["id"])
    other = Image.open(io.BytesIO(httpx.get(plain["images"][0]["url"]).content))
    assert max_difference(image, other) > 32
    # Bob cannot use Alice's upload.
    response = bob.post("/huabu/v1/generations", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "init_image"


def test_inpainting_keeps_what_the_mask_does_not_mark(alice, bob):
    source = Image.effect_noise((64, 64), 80).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    ids = [
        alice.post("/huabu/v1/uploads", files={"file": (name, png_bytes(image))}).json()["id"]
        for name, image in (("source.png", source), ("mask.png", mask))
    ]
    body = SMALL | {"init_image": ids[0], "strength": 1.0, "inpaint": {"mask": ids[1], "blur": 0}}
    task = wait_finished(alice, submit(alice, body)["id"])
    assert task["state"] == "succeeded", task
    image = Image.open(io.BytesIO(httpx.get(task["images"][0]["url"]).content)).convert("RGB")
    assert image.crop((32, 0, 64, 64)).tobytes() == source.crop((32, 0, 64, 64)).tobytes()
    assert max_difference(image.crop((0, 0, 32, 64)), source.crop((0, 0, 32, 64))) > 32
    assert "Mask blur: 0" in task["images"][0]["infotext"]
    # A mask with nothing to repaint, a missing source, someone else's mask: refused at submit.
    black = alice.post(
        "/huabu/v1/uploads", files={"file": ("black.png", png_bytes(Image.new("L", (64, 64), 0)))}
    ).json()["id"]
    own = bob.post("/huabu/v1/uploads", files={"file": ("s.png", png_bytes(source))}).json()["id"]
    for client, change, param in (
        (alice, {"inpaint": {"mask": black}}, "inpaint.mask"),
        (alice, {"init_image": None}, "inpaint"),
        (bob, {"init_image": own}, "inpaint.mask"),
    ):
        response = client.post("/huabu/v1/generations", json=body | change)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param, response.text


def test_users_take_turns(alice, bob):
    """One worker; alice queues 20 tasks, then bob 2: bob's do not wait behind all of alice's.
    Both finish before alice's sixth, and their queue positions said so at submit."""
    first = submit(alice, SLOW)  # holds the worker while the rest are queued
    wait_state(alice, first["id"], "running")
    mine = [first] + [submit(alice, SMALL) for _ in range(19)]
    theirs = [submit(bob, SMALL) for _ in range(2)]
    # Round-robin: bob's first is next; his second comes after alice's next one.
    assert [task["queue_position"] for task in theirs] == [0, 2]
    step_aside(alice, first)  # the 21 queued ones start now
    queued = mine[1:]
    finished = [wait_finished(alice, t["id"]) for t in queued]
    finished += [wait_finished(bob, t["id"]) for t in theirs]
    assert all(task["state"] == "succeeded" for task in finished)
    order = [task["id"] for task in sorted(finished, key=lambda task: task["finished_at"])]
    sixth_of_alice = [order.index(task["id"]) for task in queued][4]  # the first was `first`
    assert all(order.index(task["id"]) < sixth_of_alice for task in theirs)


def test_priorities_go_first_and_requests_may_ask_lower_only(accounts, server, alice):
    """carol (priority 5, set by an admin) jumps alice's queue; alice's key with priority 2
    comes next; alice may ask for a lower level than hers, and is refused a higher one."""
    carol = accounts.add_user("vip@example.com", "password123")
    Administration(accounts).set_priority("admin@example.com", carol.id, 5)
    carol_client = server.client(accounts.create_key(carol.id))
    alice_id = accounts.user_by_email("alice@example.com").id
    fast_key = server.client(accounts.create_key(alice_id, priority=2))
    blocker = submit(alice, SLOW)
    wait_state(alice, blocker["id"], "running")
    # Different step counts, so that none of them share a loop (batching) and the finishing
    # order is the handing-out order.
    normal = [submit(alice, SMALL | {"steps": steps}) for steps in (8, 9, 10)]
    assert normal[0]["priority"] == 0
    low = submit(alice, SMALL | {"steps": 11, "priority": -1})
    urgent = submit(carol_client, SMALL | {"steps": 12})
    assert (urgent["priority"], urgent["queue_position"]) == (5, 0)
    keyed = submit(fast_key, SMALL | {"steps": 13})
    assert (keyed["priority"], keyed["queue_position"]) == (2, 1)
    refused = alice.post("/huabu/v1/generations", json=SMALL | {"priority": 1})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "priority"
    assert "between -9 and 0" in refused.json()["error"]["message"]
    # Positions come from a snapshot of the queue at most 0.5 s old: the new order shows soon.
    settled(alice, low["id"], lambda task: task["queue_position"] == 5)
    step_aside(alice, blocker)
    expected = [urgent, keyed, *normal, low]
    done = [wait_finished(alice if t not in (urgent,) else carol_client, t["id"]) for t in expected]
    assert all(task["state"] == "succeeded" for task in done)
    order = sorted(done, key=lambda task: task["finished_at"])
    assert [t["id"] for t in order] == [t["id"] for t in expected]


def test_queued_tasks_that_fit_share_one_loop(alice, bob):
    """Tasks of two users with the same shape, queued while the worker is busy, run as one
    batch: each gets its own images (the ones it gets alone), a task cancelled inside the
    batch ends cancelled without images while the others go on, and positions and ETAs
    count the batch as running."""
    blocker = submit(alice, SLOW)
    wait_state(alice, blocker["id"], "running")
    shape = SLOW | {"width": 192, "height": 192, "steps": 24}
    batch = [
        submit(alice, shape | {"prompt": "a lighthouse", "seed": 1, "guidance": 7}),
        submit(bob, shape | {"prompt": "a bowl of ramen", "seed": 2, "guidance": 4}),
        submit(alice, shape | {"prompt": "a red fox", "seed": 3, "guidance": 9, "n_images": 2}),
    ]
    later = submit(bob, SMALL)  # another shape: it waits for the batch
    clients = [alice, bob, alice]
    running = [wait_state(c, t["id"], "running") for c, t in zip(clients, batch, strict=True)]
    # The worker claims its own job first, then the ones that join it, then records the
    # batch's size on all three: read each once that is written.
    running = [
        settled(c, t["id"], lambda task: task["batch_size"] > 1)
        for c, t in zip(clients, batch, strict=True)
    ]
    assert {task["batch_size"] for task in running} == {3}
    assert {task["state"] for task in running} == {"running"}
    # Positions come from a snapshot of the queue at most 0.5 s old: the batch's start shows soon.
    waiting = settled(bob, later["id"], lambda task: task["queue_position"] == 0)
    assert waiting["state"] == "queued"
    etas = [
        c.get(f"/huabu/v1/tasks/{t['id']}").json()["eta_seconds"]
        for c, t in zip(clients, batch, strict=True)
    ]
    assert waiting["eta_seconds"] > max(etas) > 0  # after the batch, not after 3 runs of it
    bob.post(f"/huabu/v1/tasks/{batch[1]['id']}/cancel")
    done = [wait_finished(c, t["id"]) for c, t in zip(clients, batch, strict=True)]
    assert [task["state"] for task in done] == ["succeeded", "cancelled", "succeeded"]
    assert done[1]["images"] == []
    assert [image["seed"] for image in done[2]["images"]] == [3, 4]
    # Alone (nothing else of its shape queued), the first task's request makes the same image.
    alone = wait_finished(alice, submit(alice, batch[0]["request"])["id"])
    assert alone["batch_size"] == 1
    pictures = [
        Image.open(io.BytesIO(httpx.get(t["images"][0]["url"]).content)) for t in (done[0], alone)
    ]
    assert max_difference(*pictures) <= 2
    assert wait_finished(bob, later["id"])["state"] == "succeeded"


def test_upload_that_is_not_an_image(alice):
    response = alice.post(
        "/huabu/v1/uploads", content=b"GIF89a garbage", headers={"content-type": "image/gif"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"


def test_cancel_queued_and_running(alice):
    # Different step counts: tasks that cannot share one loop (no batching here).
    running = submit(alice, SLOW)
    queued = submit(alice, SLOW | {"steps": 61})
    last = submit(alice, SLOW | {"steps": 62})
    assert last["queue_position"] >= 1  # at submit: behind the queued ones
    wait_state(alice, running["id"], "running")
    # The others wait in order, each with an estimate that grows along the queue.
    first, second = (alice.get(f"/huabu/v1/tasks/{t['id']}").json() for t in (queued, last))
    assert (first["state"], first["queue_position"]) == ("queued", 0)
    assert (second["state"], second["queue_position"]) == ("queued", 1)
    assert 0 < first["eta_seconds"] < second["eta_seconds"]
    alice.post(f"/huabu/v1/tasks/{last['id']}/cancel")

    cancelled = alice.post(f"/huabu/v1/tasks/{queued['id']}/cancel").json()
    assert cancelled["state"] == "cancelled"  # at once, not at some later point

    alice.post(f"/huabu/v1/tasks/{running['id']}/cancel")
    stopped = wait_finished(alice, running["id"])
    assert stopped["state"] == "cancelled"
    assert stopped["progress"]["step"] < stopped["progress"]["total"]
    assert stopped["images"] == []
    # The worker is free again: a new task runs and succeeds.
    assert wait_finished(alice, submit(alice, SMALL)["id"])["state"] == "succeeded"


def test_progress_stream(alice):
    task = submit(alice, SLOW | {"steps": 30, "width": 256, "height": 128})
    states, steps, previews = [], [], []
    with alice.stream("GET", f"/huabu/v1/tasks/{task['id']}/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[len("data: ") :])
                states.append(event["state"])
                steps.append(event["progress"]["step"])
                previews.append(event["preview"])
    assert states[-1] == "succeeded"
    assert "running" in states
    assert any(0 < step < 30 for step in steps), steps  # progress seen mid-way
    assert steps == sorted(steps)
    # The live preview: the image as it denoises, at 1/8 of its size, while it runs only.
    live = [p for p in previews if p is not None]
    assert live, "no live preview while it ran"
    prefix = "data:image/png;base64,"
    assert all(p.startswith(prefix) for p in live)
    shown = Image.open(io.BytesIO(base64.b64decode(live[-1][len(prefix) :])))
    assert shown.size == (32, 16) and shown.mode == "RGB"
    assert previews[-1] is None


def test_list_is_paged_newest_first(accounts, server):
    client = client_for(accounts, server, "pager@example.com")
    ids = [submit(client, SMALL)["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/huabu/v1/tasks", params=params).json()
        assert len(page["data"]) <= 2
        seen += [task["id"] for task in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    for task_id in ids:
        wait_finished(client, task_id)


def test_models_and_health(alice, server):
    names = {model["name"] for model in alice.get("/huabu/v1/models").json()["data"]}
    assert {"demo", "demo-single"} <= names
    health = httpx.get(server.url + "/huabu/v1/health").json()
    assert health["status"] == "ok" and health["workers"] >= 1


def test_preprocessors_say_which_run_here(alice):
    listed = {item["name"]: item for item in alice.get("/huabu/v1/preprocessors").json()}
    assert listed["canny"] == {"name": "canny", "available": True, "needs": None}
    assert listed["depth_zoe"] == {
        "name": "depth_zoe",
        "available": False,
        "needs": "models/annotators/ZoeD_M12_N.pt",
    }
    assert listed["dwpose"] == {
        "name": "dwpose",
        "available": False,
        "needs": "models/annotators/yolox_l.onnx, models/annotators/dw-ll_ucoco_384.onnx",
    }
    assert listed["mediapipe_face"] == {"name": "mediapipe_face", "available": True, "needs": None}
    assert listed["openpose_hand"] == {
        "name": "openpose_hand",
        "available": False,
        "needs": "models/annotators/body_pose_model.pth, models/annotators/hand_pose_model.pth",
    }
    assert listed["softedge_hed"] == {
        "name": "softedge_hed",
        "available": False,
        "needs": "models/annotators/ControlNetHED.pth",
    }
    assert len(listed) == 30  # spec 003's 28 names, plus none and lineart_standard


def test_body_limit(alice):
    response = alice.post(
        "/huabu/v1/uploads", content=b"\0" * (51 * 2**20), headers={"content-type": "image/png"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "too_large"


def test_openapi_docs_are_served(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/huabu/v1/generations" in spec["paths"]
    assert httpx.get(server.url + "/docs").status_code == 200


def _b64(image: Image.Image) -> str:
    import base64

    return base64.b64encode(png_bytes(image)).decode()


@pytest.mark.parametrize(
    "path, body, status",
    [
        # Each sends valid images with a request refused for another reason.
        (
            "/v3/async/img2img",
            lambda image: {
                "request": {
                    "model_name": "demo",
                    "prompt": "p",
                    "image_base64": image,
                    "sampler_name": "nope",
                    "controlnet": {
                        "units": [{"model_name": "demo-controlnet", "image_base64": image}]
                    },
                }
            },
            400,
        ),
        (
            "/api/image/generate",
            lambda image: {"type": "image2image", "image": image, "model": "nope"},
            400,
        ),
        (
            "/sdapi/v1/img2img",
            lambda image: {"init_images": [image], "mask": image, "sampler_name": "nope"},
            400,
        ),
        ("/img2img", lambda image: {"init_image": image, "num_inference_steps": 151}, 400),
    ],
)
def test_refused_requests_store_no_images(alice, service_home, path, body, status):
    uploads = service_home / "files" / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    image = _b64(Image.new("RGB", (64, 64), "teal"))
    response = alice.post(path, json=body(image))
    assert response.status_code == status, response.text
    after = set(uploads.iterdir()) if uploads.exists() else set()
    assert after == before


def test_refused_openai_edits_store_no_images(alice, service_home):
    uploads = service_home / "files" / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    image = png_bytes(Image.new("RGBA", (64, 64), (0, 0, 0, 0)))
    response = alice.post(
        "/v1/images/edits",
        files={"image": ("a.png", image, "image/png"), "mask": ("m.png", image, "image/png")},
        data={"prompt": "a hat", "n": "99"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == before


# -- inputs that once made a 500 (each through real HTTP, unauthenticated where it was) --------


def test_a_cached_key_works_with_its_own_scheme_only(alice, server):
    key = alice.headers["authorization"].partition(" ")[2]
    assert alice.get("/huabu/v1/me").status_code == 200  # the key is now in the cache
    for scheme in ("Token", "Foo", "Basic"):
        response = httpx.get(
            server.url + "/huabu/v1/me", headers={"Authorization": f"{scheme} {key}"}
        )
        assert response.status_code == 401, scheme


def test_a_signature_with_non_ascii_characters_is_just_a_bad_link(server):
    with httpx.Client(base_url=server.url) as anonymous:
        response = anonymous.get("/files/a.png", params={"expires": "1", "sig": "é"})
        assert response.status_code == 404
        assert anonymous.get("/huabu/v1/health").status_code == 200  # same connection, usable


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` (8-bit greyscale) and holds no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_png_info_refuses_a_bomb_and_survives_a_truncated_image(alice):
    import base64

    bomb = base64.b64encode(_png_header(16_000, 16_000)).decode()
    response = alice.post("/sdapi/v1/png-info", json={"image": bomb})
    assert response.status_code == 400 and response.json()["param"] == "image"
    assert "the limit is" in response.json()["detail"]
    whole = png_bytes(Image.new("RGB", (64, 64), "teal"))
    truncated = base64.b64encode(whole[: len(whole) // 2]).decode()
    response = alice.post("/sdapi/v1/png-info", json={"image": truncated})
    assert response.status_code in (200, 400), response.text


@pytest.mark.parametrize(
    "method, path, payload, param",
    [
        ("GET", "/api/image/generate?start=100000000000000000000", None, "start"),
        ("POST", "/api/v1b/dataset_all", {"page": 2**62}, "page"),
        ("POST", "/api/v1b/train_submit", {"name": "n", "dataset": [10**20]}, "dataset.0"),
    ],
)
def test_huge_numbers_are_field_errors(alice, method, path, payload, param):
    response = alice.request(method, path, json=payload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert param in json.dumps(body)


@pytest.mark.parametrize(
    "path, body, status, param",
    [
        ("/huabu/v1/generations", SMALL | {"prompt": "a\x00fox"}, 400, "prompt"),
        ("/huabu/v1/generations", SMALL | {"negative_prompt": "\x00"}, 400, "negative_prompt"),
        ("/huabu/v1/generations", SMALL | {"model": "de\x00mo"}, 400, "model"),
        ("/huabu/v1/generations", SMALL | {"loras": [{"name": "x\x00"}]}, 400, "loras.0.name"),
        ("/api/image/generate", {"prompts": "\x00"}, 400, None),
        ("/sdapi/v1/options", {"sd_model_checkpoint": "a\x00"}, 400, "sd_model_checkpoint"),
        ("/api/v1b/dataset", {"name": "d\x00", "images": ["http://127.0.0.2/x.png"]}, 400, "name"),
        (
            "/api/v1b/train_submit",
            {"name": "n", "trigger_word": "\x00", "dataset": [1]},
            400,
            "trigger_word",
        ),
    ],
)
def test_nul_characters_are_field_errors(alice, path, body, status, param):
    response = alice.post(path, json=body)
    assert response.status_code == status, response.text
    if param is not None:
        assert param in response.text


def test_nul_characters_in_an_email_are_refused_naming_it(server):
    """In a body, a field error (NUL is not text); in Basic credentials, wrong credentials."""
    with httpx.Client(base_url=server.url) as anonymous:
        login = anonymous.post("/huabu/v1/sessions", json={"email": "a\x00@b.c", "password": "x"})
        assert login.status_code == 400 and login.json()["error"]["param"] == "email"
        token = anonymous.post("/api/v1b/get_token", json={"email": "a\x00@b", "password": "x"})
        assert token.status_code == 400 and "email" in token.text
        basic = anonymous.get("/sdapi/v1/sd-models", auth=("a\x00@b.c", "password123"))
        assert basic.status_code == 401


def _over_the_limit(head: bytes, tail: bytes = b""):
    """A chunked body: ``head``, then more than HUABU_MAX_BODY_BYTES (50 MiB) of "A", then
    ``tail``."""
    yield head
    block = b"A" * 2**20
    for _ in range(52):
        yield block
    yield tail


@pytest.mark.parametrize(
    "path, content_type, head, tail",
    [
        # A valid multipart body whose file part runs over the limit: a form parser reads it.
        (
            "/v1/images/edits",
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n",
            b"\r\n--xx--\r\n",
        ),
        ("/v3/async/img2img", "application/json", b'{"request": {"image_base64": "', b'"}}'),
        ("/img2img", "application/x-www-form-urlencoded", b"init_image=", b""),
    ],
)
def test_a_chunked_body_over_the_limit_is_a_413(alice, path, content_type, head, tail):
    response = alice.post(
        path, content=_over_the_limit(head, tail), headers={"content-type": content_type}
    )
    assert response.status_code == 413, response.text[:300]


def test_a_large_urlencoded_image_is_accepted(alice):
    import base64
    from urllib.parse import quote_from_bytes

    image = base64.b64encode(png_bytes(Image.effect_noise((700, 700), 100).convert("RGB")))
    assert len(image) > 2**20  # over Starlette's default cap on one form field
    body = (
        b"num_inference_steps=2&width=64&height=64&init_image=" + quote_from_bytes(image).encode()
    )
    response = alice.post(
        "/img2img", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 200, response.text[:300]


def test_the_openapi_document_shows_the_400s_the_server_sends(server):
    document = httpx.get(server.url + "/openapi.json").json()
    operations = [op for path in document["paths"].values() for op in path.values()]
    assert all("422" not in op["responses"] for op in operations)
    assert "HTTPValidationError" not in json.dumps(document)
    submit = document["paths"]["/huabu/v1/generations"]["post"]["responses"]
    assert "400" in submit and "param" in submit["400"]["description"]
