"""Spec 002, kamiya's /api/image: the doc's request example replayed against a running huabu,
every response checked against the documented envelope and record shape."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image

from helpers import max_difference
from test_service import client_for

# The request example of spec 002, as documented.
EXAMPLE = {
    "type": "text2image",
    "prompts": "礼花，气球，红色瞳孔，小巷，看着观众，城市，浮世绘，头发飘起，",
    "negativePrompts": "lowres, bad anatomy, bad hands, text, error, missing fingers",
    "step": 28,
    "cfg": 12,
    "seed": 218506577,
    "sampling": "DPM++ 2M Karras",
    "width": 768,
    "height": 512,
    "model": "original",
    "LoRAs": [{"id": "bocchiEdStyleLora_bocchiEdStyle", "weight": 60}],
}
#: The same, on a model this server has, without LoRAs, small enough for a CPU test.
RUNNABLE = EXAMPLE | {"model": "demo", "LoRAs": [], "width": 128, "height": 96, "step": 8}
RECORD_KEYS = {"id", "hashid", "metaid", "status", "metadata", "userId", "createdAt", "updatedAt"}
METADATA_KEYS = {
    "LoRAs", "model", "width", "height", "type", "prompts", "negativePrompts", "sampling",
    "step", "cfg", "seed", "batch", "artboard",
}  # fmt: skip


@pytest.fixture(scope="module")
def erin(accounts, server):
    return client_for(accounts, server, "erin@example.com")


@pytest.fixture(scope="module")
def frank(accounts, server):
    return client_for(accounts, server, "frank@example.com")


def envelope(response: httpx.Response, status: int = 200):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"status", "message", "data"} and body["status"] == status
    return body


def wait_generated(client: httpx.Client, hashid: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        data = envelope(client.get(f"/api/image/generate/{hashid}"))["data"]
        if data["status"] in ("generated", "failed"):
            return data
        assert data["status"] in ("created", "generating")
        time.sleep(0.1)
    raise AssertionError(f"{hashid} never finished")


def test_config_reflects_the_server(erin):
    body = envelope(erin.get("/api/image/config"))
    assert body["message"] == "OK"
    data = body["data"]
    assert {"demo", "demo-single"} <= {model["id"] for model in data["models"]}
    assert "DPM++ 2M Karras" in data["samplings"] and "768x512" in data["artboards"]
    assert data["limits"]["step"]["max"] == 150


def test_documented_example_names_what_it_cannot_do(erin):
    body = envelope(erin.post("/api/image/generate", json=EXAMPLE | {"model": "demo"}), 400)
    assert body["data"] is None and body["message"].startswith("LoRAs.0.id: ")
    assert "bocchiEdStyleLora_bocchiEdStyle" in body["message"] and "demo-lora" in body["message"]
    body = envelope(erin.post("/api/image/generate", json=EXAMPLE | {"LoRAs": []}), 400)
    assert "original" in body["message"] and "demo" in body["message"]  # lists what exists


def test_text2image_lifecycle(erin):
    created = envelope(erin.post("/api/image/generate", json=RUNNABLE))["data"]
    assert set(created) == RECORD_KEYS and created["status"] == "created"
    assert set(created["metadata"]) == METADATA_KEYS
    assert created["metadata"]["artboard"] == "128x96"
    assert created["metadata"]["seed"] == 218506577
    assert created["metadata"]["sampling"] == "DPM++ 2M Karras"
    assert len(created["metaid"]) == 32 and created["id"] == created["hashid"][:7]
    done = wait_generated(erin, created["hashid"])
    assert done["status"] == "generated" and set(done["metadata"]) == METADATA_KEYS | {"jpg"}
    response = httpx.get(done["metadata"]["jpg"])
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).size == (128, 96)


def test_loras_are_applied_and_reported(erin):
    plain = envelope(erin.post("/api/image/generate", json=RUNNABLE | {"seed": 9}))["data"]
    lora = {"LoRAs": [{"id": "demo-lora", "weight": 100}], "seed": 9}
    styled = envelope(erin.post("/api/image/generate", json=RUNNABLE | lora))["data"]
    assert styled["metadata"]["LoRAs"] == [{"id": "demo-lora", "weight": 100}]
    images = []
    for created in (plain, styled):
        done = wait_generated(erin, created["hashid"])
        images.append(Image.open(io.BytesIO(httpx.get(done["metadata"]["jpg"]).content)))
    assert max_difference(*images) > 8  # the LoRA changed the picture
    config = envelope(erin.get("/api/image/config"))["data"]
    assert {"id": "demo-lora", "name": "demo-lora"} in config["LoRAs"]


def test_the_sdxl_demo_with_its_lora(erin):
    config = envelope(erin.get("/api/image/config"))["data"]
    assert "demo-xl" in {model["id"] for model in config["models"]}
    body = RUNNABLE | {
        "model": "demo-xl",
        "width": 64,
        "height": 64,
        "step": 6,
        "LoRAs": [{"id": "demo-xl-lora", "weight": 100}],
    }
    done = wait_generated(
        erin, envelope(erin.post("/api/image/generate", json=body))["data"]["hashid"]
    )
    assert done["status"] == "generated" and done["metadata"]["model"] == "demo-xl"
    assert Image.open(io.BytesIO(httpx.get(done["metadata"]["jpg"]).content)).size == (64, 64)


def test_image2image_with_a_data_url(erin):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (250, 0, 0)).save(buffer, format="PNG")
    image = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = RUNNABLE | {"type": "image2image", "image": image, "width": 64, "height": 64}
    created = envelope(erin.post("/api/image/generate", json=body))["data"]
    assert created["metadata"]["type"] == "image2image"
    done = wait_generated(erin, created["hashid"])
    assert done["status"] == "generated"
    assert Image.open(io.BytesIO(httpx.get(done["metadata"]["jpg"]).content)).size == (64, 64)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"type": "image2image"}, "image"),  # no image
        ({"type": "image2image", "image": "data:image/png;base64,@@@"}, "image"),
        ({"type": "painting"}, "type"),
        ({"step": 0}, "step"),
        ({"cfg": 31}, "cfg"),
        ({"width": 100}, "width"),
        ({"sampling": "Euler z"}, "sampling"),
        ({"LoRAs": [{"id": "x", "weight": 101}]}, "LoRAs"),
    ],
)
def test_bad_fields_get_the_envelope_and_a_name(erin, change, field):
    body = envelope(erin.post("/api/image/generate", json=RUNNABLE | change), 400)
    assert body["data"] is None and field in body["message"]


def test_list_is_the_callers_own_newest_first(erin, frank):
    mine = [envelope(frank.post("/api/image/generate", json=RUNNABLE))["data"] for _ in range(3)]
    listed = envelope(frank.get("/api/image/generate", params={"start": 1, "take": 2}))["data"]
    assert [item["hashid"] for item in listed] == [mine[2]["hashid"], mine[1]["hashid"]]
    rest = envelope(frank.get("/api/image/generate", params={"start": 3, "take": 2}))["data"]
    assert [item["hashid"] for item in rest] == [mine[0]["hashid"]]
    others = envelope(erin.get("/api/image/generate", params={"start": 1, "take": 100}))["data"]
    assert not {item["hashid"] for item in others} & {item["hashid"] for item in mine}
    body = envelope(erin.get(f"/api/image/generate/{mine[0]['hashid']}"), 404)
    assert body["data"] is None
    for item in mine:
        wait_generated(frank, item["hashid"])


def test_unknown_hashid_and_bad_paging(erin):
    assert envelope(erin.get("/api/image/generate/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz"), 404)
    assert envelope(erin.get("/api/image/generate/not-a-hashid"), 404)
    assert "take" in envelope(erin.get("/api/image/generate?take=0"), 400)["message"]


def test_missing_key_gets_the_envelope(server):
    with server.client() as anonymous:
        body = envelope(anonymous.get("/api/image/config"), 401)
    assert body["data"] is None
