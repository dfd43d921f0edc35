"""Spec 003, novita's v3 API, driven by the official `novita-client` SDK from PyPI with only
its base_url pointed at a running huabu."""

from __future__ import annotations

import base64
import io

import pytest
import requests
from novita_client import (
    Img2ImgV3ControlNetUnit,
    NovitaClient,
    NovitaResponseError,
    Txt2ImgV3Embedding,
    Txt2ImgV3LoRA,
    Txt2ImgV3Refiner,
)
from novita_client.proto import V3TaskResponseStatus
from PIL import Image, ImageDraw

from helpers import max_difference


@pytest.fixture(scope="module")
def key(accounts, server):
    return accounts.create_key(accounts.add_user("ivan@example.com", "password123").id)


@pytest.fixture(scope="module")
def client(server, key):
    return NovitaClient(key, base_url=server.url)


def decoded(result) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in result.images_encoded]


def test_txt2img_v3_with_a_lora(client):
    common = dict(
        model_name="demo",
        prompt="a red fox",
        image_num=2,
        width=128,
        height=128,
        steps=8,
        seed=42,
        sampler_name="Euler a",
        response_image_type="png",
    )
    plain = client.txt2img_v3(**common)
    styled = client.txt2img_v3(**common, loras=[Txt2ImgV3LoRA(model_name="demo-lora", strength=1)])
    for result in (plain, styled):
        assert result.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED
        assert result.extra.seed == 42 and result.task.progress_percent == 100
        assert [image.image_type for image in result.images] == ["png", "png"]
        assert all(image.image_url_ttl > 0 for image in result.images)
        assert [picture.size for picture in decoded(result)] == [(128, 128)] * 2
    assert max_difference(decoded(plain)[0], decoded(styled)[0]) > 8


def test_embeddings_are_used_in_the_prompt(client):
    common = dict(model_name="demo", image_num=1, width=128, height=128, steps=8, seed=7)
    plain = client.txt2img_v3(prompt="a fox", **common)
    embedded = client.txt2img_v3(
        prompt="a fox, demo-embedding",
        embeddings=[Txt2ImgV3Embedding(model_name="demo-embedding.safetensors")],
        **common,
    )
    assert embedded.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED
    assert max_difference(decoded(plain)[0], decoded(embedded)[0]) > 0


def test_sd_vae_and_clip_skip(client):
    common = dict(
        model_name="demo", prompt="a fox", image_num=1, width=128, height=128, steps=8, seed=11
    )
    plain = decoded(client.txt2img_v3(**common))[0]
    other_vae = decoded(client.txt2img_v3(**common, sd_vae="demo-vae.safetensors"))[0]
    skipped = decoded(client.txt2img_v3(**common, clip_skip=2))[0]
    assert max_difference(plain, other_vae) > 50  # demo-vae inverts colours
    assert max_difference(plain, skipped) > 0


def test_img2img_v3(client):
    buffer = io.BytesIO()
    Image.new("RGB", (160, 128), (20, 90, 200)).save(buffer, format="PNG")
    source = base64.b64encode(buffer.getvalue()).decode()
    result = client.img2img_v3(
        model_name="demo.safetensors",
        input_image=source,
        prompt="sea",
        image_num=1,
        width=160,
        height=128,
        steps=8,
        strength=0.6,
        response_image_type="webp",
    )
    assert result.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED
    assert result.task.task_type == "IMG_TO_IMG" and result.images[0].image_type == "webp"
    assert decoded(result)[0].size == (160, 128)


def test_img2img_v3_with_a_controlnet_unit(client):
    buffer = io.BytesIO()
    picture = Image.new("RGB", (128, 128), (0, 0, 0))
    ImageDraw.Draw(picture).ellipse((32, 32, 96, 96), fill=(255, 255, 255))
    picture.save(buffer, format="PNG")
    source = base64.b64encode(buffer.getvalue()).decode()
    common = dict(
        model_name="demo",
        input_image=source,
        prompt="moon",
        image_num=1,
        width=128,
        height=128,
        steps=8,
        seed=3,
        strength=0.7,
    )
    plain = client.img2img_v3(**common)
    unit = Img2ImgV3ControlNetUnit(
        model_name="demo-controlnet", image_base64=source, strength=1.0, preprocessor="canny"
    )
    controlled = client.img2img_v3(**common, controlnet_units=[unit])
    assert controlled.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED
    assert max_difference(decoded(plain)[0], decoded(controlled)[0]) > 0


def test_img2img_v3_with_an_ip_adapter(server, key):
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), (40, 160, 40)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    reference = {"model_name": "demo-ip-adapter", "image_base64": image, "strength": 1.0}
    task = raw(
        server,
        key,
        "/v3/async/img2img",
        VALID | {"image_base64": image, "ip_adapters": [reference]},
    )
    assert task.status_code == 200, task.text
    done = NovitaClient(key, base_url=server.url).wait_for_task_v3(task.json()["task_id"])
    assert done.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED, done.task.reason


def test_txt2img_v3_runs_its_controlnet_units(server, key):
    """novita's txt2img takes ControlNet units as its img2img does: they steer the image (it
    differs from the same seed without them) and the task records them."""
    buffer = io.BytesIO()
    picture = Image.new("RGB", (128, 128), (0, 0, 0))
    ImageDraw.Draw(picture).rectangle((24, 24, 104, 104), fill=(255, 255, 255))
    picture.save(buffer, format="PNG")
    source = base64.b64encode(buffer.getvalue()).decode()
    unit = {
        "model_name": "demo-controlnet",
        "image_base64": source,
        "strength": 1.0,
        "preprocessor": "canny",
    }
    common = VALID | {"seed": 5}
    images = []
    for request in (common, common | {"controlnet": {"units": [unit]}}):
        task = raw(server, key, "/v3/async/txt2img", request)
        assert task.status_code == 200, task.text
        done = NovitaClient(key, base_url=server.url).wait_for_task_v3(task.json()["task_id"])
        assert done.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED, done.task.reason
        images.append(Image.open(io.BytesIO(requests.get(done.images[0].image_url).content)))
        native = requests.get(
            f"{server.url}/huabu/v1/tasks/{task.json()['task_id']}",
            headers={"Authorization": f"Bearer {key}"},
        ).json()
    assert [u["model"] for u in native["request"]["controlnets"]] == ["demo-controlnet"]
    assert max_difference(images[0], images[1]) > 0


def test_models_v3_lists_the_library_by_type(client):
    models = client.models_v3(refresh=True)
    checkpoints = {m.name for m in models.filter_by_type("checkpoint")}
    assert {"demo", "demo-single"} <= checkpoints
    assert "demo-lora" in {m.name for m in models.filter_by_type("lora")}
    assert "demo-embedding" in {m.name for m in models.filter_by_type("textualinversion")}
    assert {m.name for m in models.filter_by_type("controlnet")} == {
        "demo-controlnet",
        "demo-controlnet-single",
        "demo-xl-controlnet",
    }
    assert "demo-vae" in {m.name for m in models.filter_by_type("vae")}
    assert {m.name for m in models.filter_by_type("ipadapter")} == {
        "demo-ip-adapter",
        "demo-xl-ip-adapter",
    }
    loras = client.query_model_v3(types="lora")
    assert "demo-lora" in [m.name for m in loras.models]
    assert all(m.type.name == "lora" for m in loras.models)


def raw(server, key, path: str, request: dict, extra: dict | None = None):
    return requests.post(
        server.url + path,
        json={"extra": extra or {}, "request": request},
        headers={"Authorization": f"Bearer {key}"},
    )


VALID = {"model_name": "demo", "prompt": "fox", "width": 128, "height": 128, "image_num": 1,
         "steps": 8}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"width": 64}, "request.width"),  # spec range [128, 2048]
        ({"image_num": 9}, "request.image_num"),
        ({"steps": 101}, "request.steps"),
        ({"guidance_scale": 0.5}, "request.guidance_scale"),
        ({"prompt": ""}, "request.prompt"),
        ({"clip_skip": 13}, "request.clip_skip"),
        ({"seed": -2}, "request.seed"),
        ({"sampler_name": "Euler z"}, "request.sampler_name"),
        ({"model_name": "nope"}, "request.model_name"),
        ({"loras": [{"model_name": "nope", "strength": 1}]}, "request.loras.0.model_name"),
        ({"loras": [{"model_name": "demo-lora"}] * 6}, "request.loras"),
        ({"embeddings": [{"model_name": "x"}]}, "request.embeddings.0.model_name"),
        ({"embeddings": [{"model_name": "demo-embedding"}] * 6}, "request.embeddings"),
        (
            {
                "hires_fix": {
                    "target_width": 256,
                    "target_height": 256,
                    "upscaler": "RealESRNet_x4plus",
                }
            },
            "request.hires_fix.upscaler",
        ),
        (
            {"hires_fix": {"target_width": 4096, "target_height": 4096}},
            "request.hires_fix.target_width",
        ),
        ({"refiner": {"switch_at": 0.5}}, "request.refiner"),
        ({"sd_vae": "nope.safetensors"}, "request.sd_vae"),
    ],
)
def test_ranges_are_enforced_and_named(server, key, change, param):
    response = raw(server, key, "/v3/async/txt2img", VALID | change)
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"code", "reason", "message", "metadata"}
    assert body["reason"] == "INVALID_REQUEST_BODY" and body["metadata"]["param"] == param
    assert param in body["message"]


def test_img2img_errors(server, key):
    ok_image = base64.b64encode(io.BytesIO(b"not an image").getvalue()).decode()
    response = raw(server, key, "/v3/async/img2img", VALID | {"image_base64": ok_image})
    assert response.status_code == 400
    assert response.json()["metadata"]["param"] == "request.image_base64"
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128)).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    unit = {"model_name": "demo-controlnet", "image_base64": image, "preprocessor": "softedge_hed"}
    response = raw(
        server,
        key,
        "/v3/async/img2img",
        VALID | {"image_base64": image, "controlnet": {"units": [unit]}},
    )
    assert response.status_code == 400, response.text
    assert response.json()["metadata"]["param"] == "request.controlnet.units.0.preprocessor"
    assert "models/annotators/ControlNetHED.pth" in response.json()["message"]  # what is missing
    adapters = {
        "image_base64": image,
        "ip_adapters": [{"model_name": "nope.bin", "image_base64": image}],
    }
    response = raw(server, key, "/v3/async/img2img", VALID | adapters)
    assert response.json()["metadata"]["param"] == "request.ip_adapters.0.model_name"
    two = {"image_base64": image, "ip_adapters": [adapters["ip_adapters"][0]] * 2}
    response = raw(server, key, "/v3/async/img2img", VALID | two)
    assert response.json()["metadata"]["param"] == "request.ip_adapters"
    response = raw(server, key, "/v3/async/txt2img", VALID, {"response_image_type": "gif"})
    assert response.status_code == 400 and "response_image_type" in response.json()["message"]


def test_bad_key_and_unknown_task(server, key):
    with pytest.raises(NovitaResponseError, match="401"):
        NovitaClient("hb_aaaaaaaaaaaa_" + "x" * 43, base_url=server.url).txt2img_v3(
            model_name="demo", prompt="x", image_num=1
        )
    response = requests.get(
        server.url + "/v3/async/task-result",
        params={"task_id": "6a3c6c6a-0000-4000-8000-000000000000"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 404 and response.json()["reason"] == "NOT_FOUND"


def test_sdxl_models_are_filtered_and_generate_with_their_extras(client, server, key):
    """filter.is_sdxl as novita's model list has it; the SDXL demo generates with its LoRA
    and embedding, and its base_model says SDXL."""
    listed = requests.get(
        server.url + "/v3/model",
        params={"filter.is_sdxl": "true"},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["models"]
    names = {m["name"] for m in listed}
    assert {
        "demo-xl",
        "demo-xl-single",
        "demo-xl-lora",
        "demo-xl-embedding",
        "demo-xl-controlnet",
    } <= names
    assert not names & {"demo", "demo-single", "demo-v"}
    assert {m["base_model"] for m in listed} == {"SDXL", "SDXL refiner"}
    others = requests.get(
        server.url + "/v3/model",
        params={"filter.is_sdxl": "false"},
        headers={"Authorization": f"Bearer {key}"},
    ).json()["models"]
    assert "demo" in {m["name"] for m in others} and not names & {m["name"] for m in others}
    common = dict(
        model_name="demo-xl",
        prompt="a red fox",
        image_num=1,
        width=128,
        height=128,
        steps=6,
        seed=42,
        sampler_name="Euler a",
    )
    plain = client.txt2img_v3(**common)
    styled = client.txt2img_v3(
        **(common | {"prompt": "a red fox, demo-xl-embedding"}),
        loras=[Txt2ImgV3LoRA(model_name="demo-xl-lora", strength=1)],
        embeddings=[Txt2ImgV3Embedding(model_name="demo-xl-embedding")],
    )
    for result in (plain, styled):
        assert result.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED, result.task.reason
        assert decoded(result)[0].size == (128, 128)
    assert max_difference(decoded(plain)[0], decoded(styled)[0]) > 8
    # novita's refiner names no model: the server's only SDXL refiner runs.
    refined = client.txt2img_v3(**common, refiner=Txt2ImgV3Refiner(switch_at=0.5))
    assert refined.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED, refined.task.reason
    assert max_difference(decoded(plain)[0], decoded(refined)[0]) > 0
