"""Specs 000/001, the api/v1b generation API of remagi.io and miaohua: the docs' own Python
`requests` snippets, pointed at a running huabu; and URL fetching that cannot be turned
against the server's own network."""

from __future__ import annotations

import http.server
import io
import threading
import time

import httpx
import pytest
import requests
from PIL import Image

BASE = None  # set by the `url` fixture
SUBMIT = {
    "model_name": "demo",  # the docs use "Artist_V0.1.3"; this server's model is the demo
    "prompt": "one girl, beautiful",
    "neg_prompt": "unsafe",
    "n_images": 2,
    "scale": 7,
    "output_size": "64x64",  # the docs use 640x640; small enough for a CPU test
    "select_seed": 0,
}
RESULT_KEYS = {"state", "images", "error_msg", "wait_time", "select_seed", "fav"}


def png(size=(64, 64), colour=(10, 200, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


class _Images(http.server.BaseHTTPRequestHandler):
    """An image host: /img.png, and redirects (to loopback, which must not be followed)."""

    target = ""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/img.png":
            body = png((80, 48))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/to-loopback":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


def serve_images(host: str) -> str:
    server = http.server.ThreadingHTTPServer((host, 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://{host}:{server.server_address[1]}"


@pytest.fixture(scope="module")
def hosts():
    loopback = serve_images("127.0.0.1")  # "internal": never allowed
    public = serve_images("127.0.0.2")  # allow-listed by the test server (conftest)
    _Images.target = loopback + "/img.png"
    return public, loopback


@pytest.fixture(scope="module")
def url(server):
    return server.url + "/api/v1b/"


@pytest.fixture(scope="module")
def token(accounts, url):
    accounts.add_user("grace@example.com", "password123")
    # The get_token snippet of the docs.
    data = {"email": "grace@example.com", "password": "password123"}
    response = requests.post(url + "get_token", json=data)
    assert response.status_code == 200
    assert set(response.json()) == {"token"}
    return response.json()["token"]


def result(url: str, token: str, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.post(url + "task_result", json={"task_id": task_id, "token": token})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == RESULT_KEYS
        if body["state"] != "pending":
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} still pending")


def test_generation_form_reflects_the_server(url):
    response = requests.get(url + "get_generation_form")
    body = response.json()
    assert body["code"] == 0 and body["msg"] == ""
    fields = {item["name"]: item for item in body["info"]}
    assert {
        "model_name",
        "prompt",
        "neg_prompt",
        "n_images",
        "scale",
        "select_seed",
        "resolution",
        "init_img",
    } == set(fields)
    assert {"demo", "demo-single"} <= set(fields["model_name"]["choices"])
    assert fields["n_images"]["max"] == 8 and fields["scale"]["max"] == 20
    # 1536x1024 is over the default 2048×2048 pixel budget? No: 1.5 MP is within it.
    assert "640x640" in fields["resolution"]["choices"]["1:1"]


def test_text_to_image_as_in_the_docs(url, token):
    response = requests.post(url + "task_submit", json=SUBMIT | {"token": token})
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"task_id"}
    body = result(url, token, response.json()["task_id"])
    assert body["state"] == "done" and body["error_msg"] == ""
    assert body["select_seed"] == 0 and body["fav"] is False and body["wait_time"] == 0
    assert [image["save_index"] for image in body["images"]] == [0, 1]
    for image in body["images"]:
        assert set(image) == {"large", "middle", "save_index", "share", "shareable"}
        large = Image.open(io.BytesIO(requests.get(image["large"]).content))
        middle = Image.open(io.BytesIO(requests.get(image["middle"]).content))
        assert large.size == (64, 64) and large.format == "PNG"
        assert middle.format == "JPEG" and middle.size[0] <= 256


def test_the_sdxl_demo(url, token):
    body = SUBMIT | {"token": token, "model_name": "demo-xl", "n_images": 1}
    response = requests.post(url + "task_submit", json=body)
    assert response.status_code == 200, response.text
    done = result(url, token, response.json()["task_id"])
    assert done["state"] == "done", done["error_msg"]
    large = Image.open(io.BytesIO(requests.get(done["images"][0]["large"]).content))
    assert large.size == (64, 64)


def test_random_seed_is_reported(url, token):
    task_id = requests.post(
        url + "task_submit", json=SUBMIT | {"token": token, "select_seed": -1, "n_images": 1}
    ).json()["task_id"]
    assert result(url, token, task_id)["select_seed"] >= 0


def test_image_to_image_from_this_servers_own_link(url, token):
    submitted = requests.post(url + "task_submit", json=SUBMIT | {"token": token, "n_images": 1})
    first = result(url, token, submitted.json()["task_id"])
    body = SUBMIT | {"token": token, "n_images": 1, "init_img": first["images"][0]["large"]}
    task = requests.post(url + "task_submit", json=body)
    assert task.status_code == 200, task.text
    assert result(url, token, task.json()["task_id"])["state"] == "done"


def test_image_to_image_from_a_public_host(url, token, hosts):
    public, _ = hosts
    body = SUBMIT | {
        "token": token,
        "n_images": 1,
        "init_img": public + "/img.png",
        "output_size": "80x64",
    }
    task = requests.post(url + "task_submit", json=body)
    assert task.status_code == 200, task.text
    done = result(url, token, task.json()["task_id"])
    assert Image.open(io.BytesIO(requests.get(done["images"][0]["large"]).content)).size == (80, 64)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("{loopback}/img.png", "not a public address"),  # loopback
        ("http://localhost:1/img.png", "not a public address"),  # a name that resolves to loopback
        ("http://10.0.0.1/img.png", "not a public address"),  # private
        ("http://169.254.169.254/latest/meta-data/", "not a public address"),  # cloud metadata
        ("http://[::1]/img.png", "not a public address"),
        ("{public}/to-loopback", "not a public address"),  # a public host redirecting inside
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.2/", "only http and https"),
        # Malformed URLs and hosts (each was a 500).
        ("http://127.0.0.2:99999/img.png", "not a valid URL"),
        ("http://127.0.0.2:abc/img.png", "not a valid URL"),
        ("http://[::1/img.png", "not a valid URL"),
        ("http://[not-ipv6]/img.png", "not a valid URL"),
        ("http://a..b/img.png", "cannot resolve"),
        ("http://" + "a" * 64 + ".example/img.png", "cannot resolve"),
        ("http://so\u00adft.example/img.png", "cannot resolve"),
        # Special-purpose addresses, and IPv6 forms of inside IPv4 addresses.
        ("http://224.0.0.1/img.png", "not a public address"),
        ("http://[ff02::1]/img.png", "not a public address"),
        ("http://[64:ff9b::a9fe:a9fe]/img.png", "not a public address"),  # NAT64 → metadata
        ("http://[2002:7f00:1::]/img.png", "not a public address"),  # 6to4 → loopback
        ("http://[::7f00:1]/img.png", "not a public address"),  # IPv4-compatible loopback
        ("http://192.88.99.1/img.png", "not a public address"),  # the 6to4 relay
    ],
)
def test_init_img_cannot_reach_inside(url, token, hosts, target, why):
    public, loopback = hosts
    body = SUBMIT | {"token": token, "init_img": target.format(public=public, loopback=loopback)}
    response = requests.post(url + "task_submit", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["param"] == "init_img" and error["code"] == 400
    assert error["msg"].startswith("init_img: ") and why in error["msg"]
    assert "127.0.0.1" not in error["msg"] and "::1" not in error["msg"]  # no resolutions told


def test_forged_own_link_is_refused(url, token):
    body = SUBMIT | {"token": token, "init_img": BASE_FILES + "?expires=9999999999&sig=00"}
    response = requests.post(url + "task_submit", json=body)
    assert response.status_code == 400 and response.json()["param"] == "init_img"


BASE_FILES = "http://127.0.0.1:1/files/images/00000000-0000-0000-0000-000000000000/0.png"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"n_images": 9}, "n_images"),
        ({"n_images": 0}, "n_images"),
        ({"scale": 21}, "scale"),
        ({"scale": 0}, "scale"),
        ({"output_size": "big"}, "output_size"),
        ({"output_size": "100x100"}, "output_size"),
        ({"model_name": "Artist_V0.1.3"}, "model_name"),
    ],
)
def test_bad_fields_are_named(url, token, change, param):
    response = requests.post(url + "task_submit", json=SUBMIT | {"token": token} | change)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["param"] == param and param in body["msg"] and body["code"] == 400


def test_bad_token_and_unknown_task(url, token, accounts):
    response = requests.post(url + "task_submit", json=SUBMIT | {"token": "nonsense"})
    assert response.status_code == 401 and response.json()["code"] == 401
    response = requests.post(
        url + "get_token", json={"email": "grace@example.com", "password": "wrong password"}
    )
    assert response.status_code == 401
    response = requests.post(
        url + "task_result",
        json={"task_id": "f3e5b59c-7416-11ed-a160-00163e025c94", "token": token},
    )
    assert response.status_code == 404 and response.json()["code"] == 404
    # Someone else's task is just as unknown.
    other = accounts.create_key(accounts.add_user("heidi@example.com", "password123").id)
    task_id = requests.post(url + "task_submit", json=SUBMIT | {"token": token}).json()["task_id"]
    response = requests.post(url + "task_result", json={"task_id": task_id, "token": other})
    assert response.status_code == 404
    result(url, token, task_id)


def test_task_is_visible_in_the_native_api(url, token, server):
    task_id = requests.post(
        url + "task_submit", json=SUBMIT | {"token": token, "n_images": 1}
    ).json()["task_id"]
    native = httpx.get(
        f"{server.url}/huabu/v1/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}
    )
    assert native.status_code == 200 and native.json()["origin"] == "v1b"
    result(url, token, task_id)


def test_credentials_are_checked_before_the_body(url):
    for route in ("task_submit", "task_result", "dataset", "train_submit"):
        response = requests.post(url + route, json={"n_images": "many", "dataset": "x"})
        assert response.status_code == 401, (route, response.text)
        assert response.json()["code"] == 401
