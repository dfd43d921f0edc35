"""Spec 004, the plain Stable Diffusion API Server: synchronous /txt2img and /img2img with
form-urlencoded bodies, replayed against a running huabu."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from serving import Server
from test_service import client_for

FORM = {
    "prompt": "Anime girl putting her hair up",
    "seed": "10086",
    "num_outputs": "2",
    "width": "64",
    "height": "64",
    "num_inference_steps": "8",
    "guidance_scale": "7",
}


@pytest.fixture(scope="module")
def dave(accounts, server):
    return client_for(accounts, server, "dave@example.com")


def png_base64(size=(96, 64), colour=(30, 120, 200)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def check_images(body: dict, count: int, size: tuple[int, int], seed: int | None = None):
    assert set(body) == {"images", "status"} and body["status"] == "success"
    assert len(body["images"]) == count
    for index, image in enumerate(body["images"]):
        assert set(image) == {"image_url", "mime_type", "seed"}
        assert image["mime_type"] == "image/png"
        if seed is not None:
            assert image["seed"] == seed + index
        response = httpx.get(image["image_url"])
        assert response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(response.content)).size == size


def test_txt2img_form_urlencoded_as_in_the_spec(dave):
    response = dave.post(
        "/txt2img",
        content=httpx.QueryParams(FORM).__str__().encode(),
        headers={"content-type": "application/x-www-form-urlencoded;charset=utf-8"},
    )
    assert response.status_code == 200, response.text
    check_images(response.json(), 2, (64, 64), seed=10086)


def test_txt2img_accepts_json_and_is_visible_natively(dave):
    body = {key: int(value) if value.isdigit() else value for key, value in FORM.items()}
    response = dave.post("/txt2img", json=body | {"num_outputs": 1, "seed": 5})
    check_images(response.json(), 1, (64, 64), seed=5)
    latest = dave.get("/huabu/v1/tasks", params={"limit": 1}).json()["data"][0]
    assert latest["origin"] == "sdserver" and latest["request"]["seed"] == 5


def test_img2img_takes_the_size_of_the_source(dave):
    form = {k: v for k, v in FORM.items() if k not in ("width", "height")}
    response = dave.post(
        "/img2img", data=form | {"strength": "0.7", "init_image": png_base64(), "num_outputs": "1"}
    )
    assert response.status_code == 200, response.text
    check_images(response.json(), 1, (96, 64))
    data_url = "data:image/png;base64," + png_base64((64, 64))
    response = dave.post("/img2img", data=FORM | {"init_image": data_url, "num_outputs": "1"})
    check_images(response.json(), 1, (64, 64))


@pytest.mark.parametrize(
    ("path", "change", "param"),
    [
        ("/txt2img", {"num_outputs": "5"}, "num_outputs"),
        ("/txt2img", {"width": "2048"}, "width"),
        ("/txt2img", {"width": "100"}, "width"),  # not a multiple of 8
        ("/txt2img", {"num_inference_steps": "0"}, "num_inference_steps"),
        ("/txt2img", {"num_inference_steps": "151"}, "num_inference_steps"),
        ("/txt2img", {"guidance_scale": "21"}, "guidance_scale"),
        ("/txt2img", {"seed": "ten"}, "seed"),
        ("/img2img", {"init_image": "%%% not base64"}, "init_image"),
        ("/img2img", {"init_image": base64.b64encode(b"not an image").decode()}, "init_image"),
        ("/img2img", {}, "init_image"),  # missing
        ("/img2img", {"init_image": png_base64(), "strength": "1"}, "strength"),
    ],
)
def test_out_of_range_fields_are_named(dave, path, change, param):
    before = len(dave.get("/huabu/v1/tasks", params={"limit": 100}).json()["data"])
    response = dave.post(path, data=FORM | change)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["status"] == "error" and body["param"] == param and param in body["message"]
    assert len(dave.get("/huabu/v1/tasks", params={"limit": 100}).json()["data"]) == before


def test_credentials_are_required_in_the_dialects_shape(server):
    with server.client() as anonymous:
        response = anonymous.post("/txt2img", data=FORM)
    assert response.status_code == 401
    assert response.json()["status"] == "error"


@pytest.fixture(scope="module")
def xl_default(service_home, server, dave):
    """A second API process on the same database whose default checkpoint is demo-xl (the spec
    names no model: the server's default is what its clients get); the first server's worker
    generates for it."""
    api = Server(service_home, {"HUABU_WORKER": "false", "HUABU_DEFAULT_MODEL": "demo-xl"})
    yield api.client(dave.headers["authorization"].removeprefix("Bearer "))
    api.stop()


def test_a_server_whose_default_is_sdxl_generates_with_it(xl_default, dave):
    response = xl_default.post("/txt2img", data=FORM | {"num_outputs": "1"})
    assert response.status_code == 200, response.text
    check_images(response.json(), 1, (64, 64), seed=10086)
    form = {k: v for k, v in FORM.items() if k not in ("width", "height")}
    response = xl_default.post(
        "/img2img", data=form | {"strength": "0.5", "init_image": png_base64(), "num_outputs": "1"}
    )
    check_images(response.json(), 1, (96, 64))
    tasks = dave.get("/huabu/v1/tasks", params={"limit": 2}).json()["data"]
    assert [task["request"]["model"] for task in tasks] == ["demo-xl", "demo-xl"]
    assert all(task["origin"] == "sdserver" for task in tasks)
