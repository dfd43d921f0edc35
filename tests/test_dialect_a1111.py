"""AUTOMATIC1111's sdapi/v1, driven by the real `webuiapi` client from PyPI against a running
huabu: generation, listings, per-user options, LoRAs in the prompt, ControlNet units, progress
and interrupt of one's own task only, and errors that name the field."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import uuid

import pytest
import requests
import webuiapi
from PIL import Image

from helpers import max_difference
from huabu.catalog.infotext import parse_infotext

SMALL = {"steps": 8, "width": 64, "height": 64, "seed": 42, "sampler_name": "Euler a"}


def client(server, accounts, email) -> webuiapi.WebUIApi:
    accounts.add_user(email, "password123")
    # A1111's --api-auth: HTTP Basic with the user's email and password.
    return webuiapi.WebUIApi(
        baseurl=server.url + "/sdapi/v1", username=email, password="password123"
    )


@pytest.fixture(scope="module")
def api(server, accounts):
    return client(server, accounts, "webui@example.com")


@pytest.fixture(scope="module")
def other(server, accounts):
    return client(server, accounts, "other-webui@example.com")


def refused(call, param: str) -> dict:
    with pytest.raises(RuntimeError) as caught:
        call()
    status, text = caught.value.args
    assert status == 400, text
    body = json.loads(text)
    assert body["param"] == param, body
    assert {"error", "detail"} <= set(body)
    return body


def test_txt2img(api):
    result = api.txt2img(prompt="a red fox", batch_size=2, **SMALL)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [42, 43] and result.info["seed"] == 42
    assert result.info["sd_model_name"] == "demo" and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a red fox"
    assert "Seed: 43" in result.info["infotexts"][1]
    one, again = (api.txt2img(prompt="a red fox", **SMALL) for _ in range(2))
    assert max_difference(one.image, again.image) == 0  # the same seed, the same image


def test_txt2img_with_the_hires_fix_variation_seeds_and_tiling(api):
    """What webuiapi sends for a hires fix: the image comes back at the upscaled size, with
    A1111's infotext; variation seeds and tiling are applied and reported too."""
    result = api.txt2img(
        prompt="a red fox",
        enable_hr=True,
        hr_scale=2,
        denoising_strength=0.6,
        hr_upscaler=webuiapi.HiResUpscaler.Latent,
        hr_second_pass_steps=4,
        subseed=7,
        subseed_strength=0.4,
        tiling=True,
        **SMALL,
    )
    assert result.image.size == (128, 128)
    text = result.info["infotexts"][0]
    for field in (
        "Size: 64x64",
        "Hires upscale: 2",
        "Hires steps: 4",
        "Hires upscaler: Latent",
        "Denoising strength: 0.6",
        "Variation seed: 7",
        "Variation seed strength: 0.4",
        "Tiling: True",
    ):
        assert field in text, text
    assert result.info["subseed"] == 7 and result.info["all_subseeds"] == [7]
    assert result.info["denoising_strength"] == 0.6
    plain = api.txt2img(prompt="a red fox", **SMALL).image
    varied = api.txt2img(prompt="a red fox", subseed=7, subseed_strength=0.4, **SMALL).image
    assert max_difference(plain, varied) > 0
    same = api.txt2img(prompt="a red fox", subseed=7, subseed_strength=0.0, **SMALL).image
    assert max_difference(plain, same) == 0


def test_img2img(api):
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    result = api.img2img(images=[source], prompt="a fox", denoising_strength=0.5, **SMALL)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["denoising_strength"] == 0.5
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]


def test_inpainting_with_a_mask(api):
    source = Image.effect_noise((64, 64), 80).convert("RGB")
    mask = Image.new("RGB", (64, 64), "black")
    mask.paste((255, 255, 255), (0, 0, 32, 64))

    def kept(image, box):
        return image.convert("RGB").crop(box).tobytes() == source.crop(box).tobytes()

    whole = api.img2img(
        images=[source],
        mask_image=mask,
        mask_blur=0,
        inpaint_full_res=False,
        inpainting_fill=1,
        denoising_strength=1.0,
        prompt="a fox",
        **SMALL,
    )
    assert kept(whole.image, (32, 0, 64, 64)) and not kept(whole.image, (0, 0, 32, 64))
    assert whole.info["is_using_inpainting_conditioning"] is True
    # webuiapi's defaults: blur 4, "fill", only the masked area; inverted, the right half.
    inverted = api.img2img(
        images=[source], mask_image=mask, inpainting_mask_invert=1, prompt="a fox", **SMALL
    )
    assert kept(inverted.image, (0, 0, 20, 64)) and not kept(inverted.image, (40, 0, 64, 64))
    assert "Mask blur: 4, Inpaint area: Only masked" in inverted.info["infotexts"][0]
    refused(
        lambda: api.img2img(images=[source], mask_image=mask, inpainting_fill=2, **SMALL),
        "inpainting_fill",
    )
    black = Image.new("RGB", (64, 64), "black")
    refused(lambda: api.img2img(images=[source], mask_image=black, **SMALL), "mask")


def test_listings(api):
    assert {"demo", "demo-single"} <= set(api.util_get_model_names())
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(api.util_get_sampler_names())
    assert set(api.util_get_scheduler_names()) == {"automatic", "uniform", "karras"}
    assert "demo-lora" in [lora["name"] for lora in api.get_loras()]
    assert "demo-vae" in [vae["model_name"] for vae in api.get_sd_vae()]
    assert "demo-embedding" in api.get_embeddings()["loaded"]
    assert api.get_memory()["ram"]["total"] > 0
    assert api.refresh_checkpoints() is None  # as A1111 answers: a JSON null


def test_sd_webui_controlnet_listings(api):
    """What clients read before sending ControlNet units, as sd-webui-controlnet answers."""
    assert api.controlnet_version() == 2
    models = api.controlnet_model_list()
    assert models[0] == "None" and {
        "demo-controlnet",
        "demo-controlnet-single",
        "demo-xl-controlnet",
    } <= set(models)
    modules = api.controlnet_module_list()
    # mediapipe_face needs only its package, which make install installs
    assert {"none", "canny", "shuffle", "lineart_standard", "mediapipe_face"} == set(modules)
    assert "dwpose" not in modules  # its ONNX files are not on this server
    assert "softedge_hed" not in modules  # its annotator file is not on this server
    assert "openpose" not in modules  # nor are OpenPose's


def test_switching_the_model_through_options_is_per_user(api, other):
    api.util_set_model("demo-single")
    assert api.get_options()["sd_model_checkpoint"] == "demo-single"
    assert api.txt2img(prompt="a fox", **SMALL).info["sd_model_name"] == "demo-single"
    # Another user's default is untouched.
    assert other.get_options()["sd_model_checkpoint"] == "demo"
    assert other.txt2img(prompt="a fox", **SMALL).info["sd_model_name"] == "demo"
    # A request's override_settings wins over the options.
    override = {"sd_model_checkpoint": "demo.safetensors [0123456789]"}
    result = api.txt2img(prompt="a fox", override_settings=override, **SMALL)
    assert result.info["sd_model_name"] == "demo"
    body = api.set_options({"sd_model_checkpoint": "nope"})  # webuiapi returns the error body
    assert body["param"] == "sd_model_checkpoint" and "nope" in body["detail"]
    assert api.get_options()["sd_model_checkpoint"] == "demo-single"  # unchanged
    api.util_set_model("demo")


def test_lora_in_the_prompt(api):
    plain = api.txt2img(prompt="a fox", **SMALL)
    with_lora = api.txt2img(prompt="a fox <lora:demo-lora:0.8>", **SMALL)
    assert max_difference(plain.image, with_lora.image) > 0
    assert "LoRAs: demo-lora:0.8" in with_lora.info["infotexts"][0]
    assert with_lora.info["infotexts"][0].startswith("a fox\n")  # the tag is not prompt text
    refused(lambda: api.txt2img(prompt="a fox <lora:nope:1>", **SMALL), "prompt")


def test_prompt_editing_alternation_and_and(api):
    """A1111's prompt syntax through webuiapi: a switch to itself is the plain image, editing
    changes it, the infotext keeps the prompt as sent; a flow model refuses it by name."""
    plain = api.txt2img(prompt="a fox [in|in] the snow", **SMALL)
    assert max_difference(plain.image, api.txt2img(prompt="a fox in the snow", **SMALL).image) == 0
    edited = api.txt2img(prompt="a [fox:cat:0.3] in the snow AND a tree :0.4", **SMALL)
    assert max_difference(plain.image, edited.image) > 0
    assert edited.info["infotexts"][0].startswith("a [fox:cat:0.3] in the snow AND a tree :0.4\n")
    body = refused(
        lambda: api.txt2img(
            prompt="a [fox:cat:0.3]",
            override_settings={"sd_model_checkpoint": "demo-flux"},
            **(SMALL | {"sampler_name": "Euler", "cfg_scale": 1}),
        ),
        "prompt",
    )
    assert "SD 1.x, 2.x and SDXL" in body["detail"]


def test_controlnet_unit(api):
    edges = Image.new("RGB", (64, 64), "black")
    edges.paste((255, 255, 255), (16, 16, 48, 48))
    unit = webuiapi.ControlNetUnit(
        image=edges,
        module="canny",
        model="demo-controlnet",
        weight=0.8,
        guidance_start=0.1,
        guidance_end=0.9,
    )
    # A fresh alwayson_scripts each call: webuiapi writes the units into its mutable default.
    plain = api.txt2img(prompt="a fox", **SMALL)
    controlled = api.txt2img(prompt="a fox", controlnet_units=[unit], alwayson_scripts={}, **SMALL)
    assert max_difference(plain.image, controlled.image) > 0
    # The infotext lists the unit as sd-webui-controlnet does, and reads back as A1111 reads it.
    infotext = controlled.info["infotexts"][0]
    unit_text = (
        "Module: canny, Model: demo-controlnet, Weight: 0.8, Guidance Start: 0.1, Guidance End: 0.9"
    )
    assert f'ControlNet 0: "{unit_text}"' in infotext
    assert parse_infotext(infotext)["ControlNet 0"] == unit_text
    assert "ControlNet" not in plain.info["infotexts"][0]
    # sd-webui-controlnet's name for DWPose, whose files this server lacks
    unit = webuiapi.ControlNetUnit(image=edges, module="dw_openpose_full", model="demo-controlnet")
    body = refused(
        lambda: api.txt2img(prompt="a fox", controlnet_units=[unit], alwayson_scripts={}, **SMALL),
        "alwayson_scripts.controlnet.args.0.module",
    )
    assert "'dwpose'" in body["detail"] and "models/annotators/yolox_l.onnx" in body["detail"]


def test_sdxl_with_a_lora_and_a_controlnet_unit(api):
    """The SDXL demo, chosen per request as A1111 clients do, with an SDXL LoRA in the prompt
    and an SDXL ControlNet unit; the SD 1.x LoRA is refused on it by name."""
    assert {"demo-xl", "demo-xl-single"} <= set(api.util_get_model_names())
    assert "demo-xl-lora" in [lora["name"] for lora in api.get_loras()]
    override = {"sd_model_checkpoint": "demo-xl"}
    plain = api.txt2img(prompt="a fox", override_settings=override, **SMALL)
    assert plain.info["sd_model_name"] == "demo-xl" and plain.image.size == (64, 64)
    styled = api.txt2img(prompt="a fox <lora:demo-xl-lora:1>", override_settings=override, **SMALL)
    assert max_difference(plain.image, styled.image) > 0
    edges = Image.new("RGB", (64, 64), "black")
    edges.paste((255, 255, 255), (16, 16, 48, 48))
    unit = webuiapi.ControlNetUnit(image=edges, module="canny", model="demo-xl-controlnet")
    controlled = api.txt2img(
        prompt="a fox",
        override_settings=override,
        controlnet_units=[unit],
        alwayson_scripts={},
        **SMALL,
    )
    assert max_difference(plain.image, controlled.image) > 0
    with pytest.raises(RuntimeError) as caught:
        api.txt2img(prompt="a fox <lora:demo-lora:1>", override_settings=override, **SMALL)
    assert "demo-lora" in str(caught.value) and "does not fit" in str(caught.value)


def test_the_sdxl_refiner(api, server):
    """A1111's refiner_checkpoint and refiner_switch_at (webuiapi has no arguments for them,
    so the body goes as A1111's own API takes it); one that cannot refine is refused, naming
    the field."""
    auth = ("webui@example.com", "password123")
    body = SMALL | {"prompt": "a fox", "override_settings": {"sd_model_checkpoint": "demo-xl"}}

    def txt2img(**changes):
        return requests.post(server.url + "/sdapi/v1/txt2img", json=body | changes, auth=auth)

    plain, refined = (
        txt2img(),
        txt2img(refiner_checkpoint="demo-xl-refiner [0123456789]", refiner_switch_at=0.6),
    )
    assert plain.status_code == refined.status_code == 200, refined.text
    assert plain.json()["images"][0] != refined.json()["images"][0]
    infotext = json.loads(refined.json()["info"])["infotexts"][0]
    assert "Refiner: demo-xl-refiner, Refiner switch at: 0.6" in infotext
    unused = txt2img(refiner_checkpoint="demo-xl-refiner", refiner_switch_at=1.0)
    assert unused.json()["images"][0] == plain.json()["images"][0]  # 1: the switch never comes
    wrong = txt2img(refiner_checkpoint="demo-single")
    assert wrong.status_code == 400 and wrong.json()["param"] == "refiner_checkpoint", wrong.text
    assert "demo-single" in wrong.json()["detail"]
    # With the hires fix: the pass A1111's option hires_fix_refiner_pass names.
    hires = {"enable_hr": True, "hr_scale": 1.5, "refiner_checkpoint": "demo-xl-refiner"}
    first = txt2img(
        **hires,
        override_settings=body["override_settings"] | {"hires_fix_refiner_pass": "first pass"},
    )
    assert first.status_code == 200, first.text
    assert "Hires refiner: first pass" in json.loads(first.json()["info"])["infotexts"][0]
    bad = txt2img(**hires, override_settings={"hires_fix_refiner_pass": "every pass"})
    assert bad.status_code == 400, bad.text
    assert bad.json()["param"] == "override_settings.hires_fix_refiner_pass", bad.text


def test_png_info_reads_back_the_parameters(api):
    result = api.txt2img(prompt="a quiet lake", negative_prompt="blurry", **SMALL)
    info = api.png_info(result.image)
    assert "Seed: 42" in info.info
    parsed = info.json["parameters"]
    assert parsed["Prompt"] == "a quiet lake" and parsed["Negative prompt"] == "blurry"
    assert parsed["Seed"] == "42" and parsed["Size"] == "64x64"


def test_interrupt_stops_ones_own_task_only(api, other):
    outcome = {}
    slow = SMALL | {"width": 256, "height": 256, "steps": 150}
    worker = threading.Thread(target=lambda: outcome.update(result=api.txt2img(prompt="x", **slow)))
    worker.start()
    deadline = time.monotonic() + 90
    while (progress := api.get_progress())["progress"] == 0:
        assert time.monotonic() < deadline, progress
        time.sleep(0.05)
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 150
    while progress["current_image"] is None:  # the live preview, as A1111's Approx cheap
        assert time.monotonic() < deadline, progress
        progress = api.get_progress()
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.size == (32, 32) and preview.format == "PNG"
    asked = api.session.get(api.baseurl + "/progress", params={"skip_current_image": "true"})
    assert asked.json()["current_image"] is None
    assert other.get_progress()["state"]["job_count"] == 0  # nothing of theirs runs
    other.interrupt()  # ...so this stops nothing
    time.sleep(0.5)
    assert api.get_progress()["progress"] > progress["progress"]
    assert api.interrupt() == {}
    worker.join(timeout=60)
    result = outcome["result"]
    assert result.images == [] and result.info["interrupted"] is True


def test_bad_requests_name_the_field(api, server):
    refused(lambda: api.txt2img(prompt="x", **SMALL | {"width": 100}), "width")
    refused(lambda: api.txt2img(prompt="x", **SMALL | {"sampler_name": "nope"}), "sampler_name")
    refused(
        lambda: api.txt2img(prompt="x", enable_hr=True, hr_upscaler="R-ESRGAN 4x+", **SMALL),
        "hr_upscaler",
    )
    refused(
        lambda: api.txt2img(
            prompt="x", enable_hr=True, hr_scale=4, **SMALL | {"width": 640, "height": 640}
        ),
        "hr_scale",
    )
    refused(lambda: api.txt2img(prompt="x", batch_size=5, n_iter=2, **SMALL), "batch_size")
    response = requests.get(server.url + "/sdapi/v1/sd-models")
    assert response.status_code == 401
    wrong = requests.get(server.url + "/sdapi/v1/sd-models", auth=("webui@example.com", "no"))
    assert wrong.status_code == 401


def test_api_keys_work_as_bearer_and_as_basic_password(server, accounts):
    user = accounts.add_user("keyed@example.com", None)
    key = accounts.create_key(user.id)
    bearer = requests.get(
        server.url + "/sdapi/v1/options", headers={"Authorization": f"Bearer {key}"}
    )
    assert bearer.status_code == 200
    basic = requests.get(server.url + "/sdapi/v1/options", auth=("keyed@example.com", key))
    assert basic.status_code == 200
    someone_else = requests.get(server.url + "/sdapi/v1/options", auth=("webui@example.com", key))
    assert someone_else.status_code == 401


@pytest.fixture
def broken_lora(settings):
    """A file in models/loras that is not a LoRA: tasks using it fail on the worker."""
    import torch
    from safetensors.torch import save_file

    path = settings.models_dir / "loras" / "broken-lora.safetensors"
    save_file({"lora_unet_nothing.lora_down.weight": torch.zeros(4, 8)}, str(path))
    yield "broken-lora"
    path.unlink()


def test_a_failed_task_is_a_500_with_its_id_and_a_reason(api, server, broken_lora):
    response = requests.post(
        server.url + "/sdapi/v1/txt2img",
        json={"prompt": f"a fox <lora:{broken_lora}:1>"} | SMALL,
        auth=("webui@example.com", "password123"),
    )
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "TaskFailed"
    assert body["detail"] == "LoRA 'broken-lora' does not fit this checkpoint or is not a LoRA"
    assert uuid.UUID(body["task_id"])  # the task that failed, to look up natively
    listing = api.get_sd_models()
    assert all(not model["filename"].startswith("/") for model in listing)
    assert {model["filename"] for model in listing} >= {"checkpoints/demo-single.safetensors"}


#: The body of A1111's own API tests (test/test_txt2img.py): eta 0, a hires fix at
#: denoising_strength 0 when enabled, seeds not resized.
A1111_TEST_BODY = {
    "enable_hr": False,
    "denoising_strength": 0,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "prompt": "example prompt",
    "styles": [],
    "seed": 42,
    "subseed": -1,
    "subseed_strength": 0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 3,
    "cfg_scale": 7,
    "width": 64,
    "height": 64,
    "restore_faces": False,
    "tiling": False,
    "negative_prompt": "",
    "eta": 0,
    "s_churn": 0,
    "s_tmax": 0,
    "s_tmin": 0,
    "s_noise": 1,
    "sampler_index": "Euler a",
}


@pytest.mark.parametrize(
    ("changes", "images", "size"),
    [
        ({}, 1, (64, 64)),
        (
            {
                "prompt": "((emphasis)), (emphasis1:1.1), [to:1], [from::2], [from:to:0.3], "
                "[alt|alt1]"
            },
            1,
            (64, 64),
        ),
        ({"height": 128}, 1, (64, 128)),
        ({"enable_hr": True}, 1, (128, 128)),  # at denoising_strength 0: upscaled, not refined
        ({"tiling": True}, 1, (64, 64)),
        ({"sampler_index": "PLMS"}, 1, (64, 64)),
        ({"sampler_index": "DDIM"}, 1, (64, 64)),
        ({"sampler_index": "UniPC"}, 1, (64, 64)),
        ({"n_iter": 2}, 2, (64, 64)),
        ({"batch_size": 2}, 2, (64, 64)),
    ],
)
def test_a1111s_own_api_test_list(server, api, changes, images, size):
    answer = requests.post(
        server.url + "/sdapi/v1/txt2img",
        json=A1111_TEST_BODY | changes,
        auth=("webui@example.com", "password123"),
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    decoded = [Image.open(io.BytesIO(base64.b64decode(b))) for b in body["images"]]
    assert [image.size for image in decoded] == [size] * images
    info = json.loads(body["info"])
    assert info["infotexts"][0].startswith(
        A1111_TEST_BODY["prompt"] if "prompt" not in changes else changes["prompt"]
    )
    if changes.get("sampler_index", "Euler a") == "Euler a":
        assert "Eta: 0" in info["infotexts"][0]  # as A1111 writes an eta other than 1


def test_the_hires_fix_with_a_model_upscaler(api):
    result = api.txt2img(
        prompt="a fox", enable_hr=True, hr_upscaler="demo-upscaler", hr_scale=2, **SMALL
    )
    assert result.image.size == (128, 128)
    assert "Hires upscaler: demo-upscaler" in result.info["infotexts"][0]


def test_eta_0_makes_euler_a_euler_and_ddim_takes_its_eta(api):
    euler = api.txt2img(prompt="a fox", **(SMALL | {"sampler_name": "Euler"}))
    calm = api.txt2img(prompt="a fox", eta=0, **SMALL)  # SMALL's sampler: Euler a
    noisy = api.txt2img(prompt="a fox", **SMALL)  # webuiapi sends eta 1, A1111's default
    assert max_difference(euler.image, calm.image) == 0
    assert max_difference(calm.image, noisy.image) > 0
    ddim = {"sampler_name": "DDIM", "steps": 8}
    deterministic = api.txt2img(prompt="a fox", eta=0, **(SMALL | ddim))
    stochastic = api.txt2img(prompt="a fox", eta=1, **(SMALL | ddim))
    assert max_difference(deterministic.image, stochastic.image) > 0
    assert "Eta DDIM: 1" in stochastic.info["infotexts"][0]
    body = refused(lambda: api.txt2img(prompt="a fox", eta=0.5, **SMALL), "eta")
    assert "Euler a runs with eta 1, or 0" in body["detail"]


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"restore_faces": True}, "restore_faces"),
        ({"script_name": "x/y/z plot"}, "script_name"),
        ({"s_churn": 0.5}, "s_churn"),
        ({"s_noise": 0.9}, "s_noise"),
        ({"seed_resize_from_h": 128, "seed_resize_from_w": 128}, "seed_resize_from_w"),
        ({"firstphase_width": 256}, "firstphase_width"),
        ({"override_settings_restore_afterwards": False}, "override_settings_restore_afterwards"),
        ({"override_settings": {"samples_format": "jpg"}}, "override_settings.samples_format"),
        ({"override_settings": {"no_such_option": 1}}, "override_settings.no_such_option"),
        ({"infotext": "a fox\nSteps: 20"}, "infotext"),
        ({"hr_scheduler": "Karras", "enable_hr": True}, "hr_scheduler"),
    ],
)
def test_what_huabu_does_not_do_is_refused_by_name(server, api, changes, param):
    answer = requests.post(
        server.url + "/sdapi/v1/txt2img",
        json=A1111_TEST_BODY | changes,
        auth=("webui@example.com", "password123"),
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["param"] == param
    assert {"error", "detail", "body", "errors"} <= set(answer.json())


def test_what_a1111_sends_at_its_defaults_is_accepted(server, api):
    """The fields A1111 clients send at their defaults (webuiapi's img2img sends
    image_cfg_scale 1.5, which A1111 reads on instruct-pix2pix models only)."""
    square = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(square, format="PNG")
    body = {
        "init_images": [base64.b64encode(square.getvalue()).decode()],
        "prompt": "a fox",
        "image_cfg_scale": 1.5,
        "resize_mode": 0,
        "initial_noise_multiplier": 1,
        "include_init_images": False,
        "do_not_save_samples": True,
        "save_images": True,
        "override_settings": {"send_seed": True, "eta_ancestral": 1},
        "override_settings_restore_afterwards": True,
        "script_args": [],
        "script_name": None,
        **SMALL,
    }
    answer = requests.post(
        server.url + "/sdapi/v1/img2img", json=body, auth=("webui@example.com", "password123")
    )
    assert answer.status_code == 200, answer.text
    refused_resize = requests.post(
        server.url + "/sdapi/v1/img2img",
        json=body | {"resize_mode": 1},
        auth=("webui@example.com", "password123"),
    )
    assert refused_resize.status_code == 400 and refused_resize.json()["param"] == "resize_mode"


def test_the_routes_clients_call_on_connect(server, api):
    auth = ("webui@example.com", "password123")

    def get(path):
        answer = requests.get(server.url + "/sdapi/v1/" + path, auth=auth)
        assert answer.status_code == 200, (path, answer.text)
        return answer.json()

    assert [u["name"] for u in get("upscalers")] == ["None", "Lanczos", "Nearest", "demo-upscaler"]
    assert {"name": "Latent (bicubic antialiased)"} in get("latent-upscale-modes")
    assert get("face-restorers") == [] and get("realesrgan-models") == []
    assert get("hypernetworks") == [] and get("extensions") == []
    assert {s["name"] for s in get("script-info")} == {"controlnet"}
    assert get("cmd-flags")["api"] is True
    options = get("options")
    assert options["send_seed"] is True and options["eta_ancestral"] == 1.0
    assert options["sd_model_checkpoint"]
    # Options clients send back unchanged are accepted; another value is refused by name.
    ok = requests.post(server.url + "/sdapi/v1/options", json={"send_seed": True}, auth=auth)
    assert ok.status_code == 200
    bad = requests.post(server.url + "/sdapi/v1/options", json={"samples_format": "jpg"}, auth=auth)
    assert bad.status_code == 400 and bad.json()["param"] == "options.samples_format"
    interrogate = requests.post(
        server.url + "/sdapi/v1/interrogate", json={"image": "", "model": "clip"}, auth=auth
    )
    assert interrogate.status_code == 404
    assert "no interrogator is installed" in interrogate.json()["detail"]
    assert {"error", "detail"} <= set(interrogate.json())


def test_img2img_with_the_sd_upscale_script(server, api):
    """script_name "SD upscale" with A1111's script_args [info, overlap, upscaler index,
    scale]: a 64² input comes back 128², redrawn tile by tile."""
    square = io.BytesIO()
    Image.new("RGB", (64, 64), (40, 120, 200)).save(square, format="PNG")
    body = {
        "init_images": [base64.b64encode(square.getvalue()).decode()],
        "prompt": "a fox",
        "denoising_strength": 0.5,
        "script_name": "SD upscale",
        "script_args": ["", 32, 1, 2],  # 1: Lanczos in /sdapi/v1/upscalers
        **SMALL,
    }
    auth = ("webui@example.com", "password123")
    answer = requests.post(server.url + "/sdapi/v1/img2img", json=body, auth=auth)
    assert answer.status_code == 200, answer.text
    (image,) = [Image.open(io.BytesIO(base64.b64decode(b))) for b in answer.json()["images"]]
    assert image.size == (128, 128)
    info = json.loads(answer.json()["info"])
    assert "SD upscale overlap: 32, SD upscale upscaler: Lanczos" in info["infotexts"][0]
    bad = requests.post(
        server.url + "/sdapi/v1/img2img", json=body | {"script_args": ["", 32, 99, 2]}, auth=auth
    )
    assert bad.status_code == 400 and bad.json()["param"] == "script_args"
    # Refused when accepted, not after waiting: "None" keeps 64², smaller than a 128² tile.
    small_tiles = body | {"script_args": ["", 32, 0, 2], "width": 128, "height": 128}
    too_small = requests.post(server.url + "/sdapi/v1/img2img", json=small_tiles, auth=auth)
    assert too_small.status_code == 400 and too_small.json()["param"] == "script_args"
    assert "smaller than a tile" in too_small.json()["detail"]
    on_txt2img = requests.post(
        server.url + "/sdapi/v1/txt2img",
        json={"prompt": "a fox", "script_name": "SD upscale", **SMALL},
        auth=auth,
    )
    assert on_txt2img.status_code == 400 and on_txt2img.json()["param"] == "script_name"
