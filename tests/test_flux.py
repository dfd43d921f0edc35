"""FLUX.1 through diffusers' own pipelines: the tiny demo-flux (random weights, the real
FLUX.1 [dev] architecture), in the engine and through a real `huabu serve` over HTTP."""

from __future__ import annotations

import io
import json

import httpx
import pytest
from diffusers import FluxPipeline
from PIL import Image

from helpers import max_difference, pixels, source_differences
from huabu.catalog.architectures import Architecture
from huabu.catalog.infotext import parse_infotext, read_parameters
from huabu.demos.flux import DEMO_FLUX, DEMO_FLUX_LORA
from huabu.engine import flow_sampling
from huabu.errors import InvalidRequest, ModelUnavailable
from huabu.native import (
    ControlUnit,
    GenerationRequest,
    HiresFix,
    ImageRef,
    InpaintRef,
    LoraRef,
)
from test_service import submit, wait_finished

SMALL = {"model": DEMO_FLUX, "prompt": "a red fox in the snow", "width": 64, "height": 64}


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**(SMALL | {"steps": 4, "seed": 7} | changes))


def test_the_demo_is_a_flux1_folder(engine):
    entry = engine.library.find("checkpoints", DEMO_FLUX)
    assert entry.architecture is Architecture.FLUX1 and entry.layout == "diffusers"
    assert entry.describe_architecture == "FLUX.1"


def test_same_seed_same_pixels_and_each_image_is_its_own_seeds(engine):
    first = engine.generate(request(n_images=2))
    again = engine.generate(request(n_images=2))
    second_alone = engine.generate(request(seed=8))
    assert [pixels(i).tolist() for i in first.images] == [pixels(i).tolist() for i in again.images]
    assert first.seeds == [7, 8]
    # Image i of a request is the image its seed gives alone (A1111's seed + i), up to the
    # rounding of batched arithmetic.
    assert max_difference(first.images[1], second_alone.images[0]) <= 2
    assert max_difference(first.images[0], first.images[1]) > 16
    assert pixels(first.images[0]).std() > 5  # an image, not a flat colour


def test_the_prompt_steers_and_emphasis_never_fails(engine):
    plain = engine.generate(request(prompt="a red fox in the snow"))
    other = engine.generate(request(prompt="a blue whale at sea"))
    assert max_difference(plain.images[0], other.images[0]) > 16
    # T5 has no A1111 emphasis: the words count unweighted, BREAK is a space.
    weighted = engine.generate(request(prompt="a (red:1.3) [fox] in BREAK the snow"))
    assert pixels(weighted.images[0]).tolist() == pixels(plain.images[0]).tolist()


def test_the_engine_is_bare_diffusers_on_the_same_request(engine, settings):
    """What huabu adds around the pipeline changes no pixel."""
    made = engine.generate(request(distilled_guidance=2.5))
    pipe = FluxPipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_FLUX, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    import torch

    bare = pipe(
        SMALL["prompt"],
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=2.5,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(made.images[0], bare) <= 1


@pytest.mark.parametrize("sampler", ["Euler a", "Heun", "DPM2", "DPM++ 2M"])
def test_the_flow_forms_of_a1111_samplers(engine, sampler):
    seen = []
    made = engine.generate(
        request(sampler=sampler), on_progress=lambda step, total, _: seen.append((step, total))
    )
    assert seen == [(step, 4) for step in range(1, 5)]
    again = engine.generate(request(sampler=sampler))
    assert pixels(made.images[0]).tolist() == pixels(again.images[0]).tolist()
    assert (
        max_difference(made.images[0], engine.generate(request(seed=9, sampler=sampler)).images[0])
        > 16
    )
    assert made.request.sampler == sampler and f"Sampler: {sampler}," in made.infotexts[0]


def test_the_sampling_loop_is_the_pipelines_euler(engine, monkeypatch):
    """huabu's loop (which runs every flow sampler but Euler) given k-diffusion's Euler gives
    the pipeline's own Euler images, in text-to-image and image-to-image."""
    source = Image.new("RGB", (64, 64), (220, 30, 30))
    runs = [
        {"init_image": None},
        {"init_image": ImageRef(key="x"), "strength": 0.6},
    ]
    pipelines = [engine.generate(request(**r), init_image=source).images[0] for r in runs]
    monkeypatch.setitem(flow_sampling.SAMPLERS, "Euler", flow_sampling.euler)
    looped = [engine.generate(request(**r), init_image=source).images[0] for r in runs]
    for pipeline, loop in zip(pipelines, looped, strict=True):
        assert max_difference(pipeline, loop) <= 1


def test_a_lora_changes_the_image_and_leaves_nothing_behind(engine):
    assert engine.library.find("loras", DEMO_FLUX_LORA).architecture is Architecture.FLUX1
    before = engine.generate(request()).images[0]
    lora = engine.generate(request(loras=(LoraRef(name=DEMO_FLUX_LORA),))).images[0]
    half = engine.generate(request(loras=(LoraRef(name=DEMO_FLUX_LORA, weight=0.5),))).images[0]
    off = engine.generate(request(loras=(LoraRef(name=DEMO_FLUX_LORA, weight=0),))).images[0]
    after = engine.generate(request()).images[0]
    assert max_difference(lora, before) > 16 and max_difference(half, lora) > 4
    # Weight 0, and every request after one with a LoRA, is the model's own image exactly.
    assert pixels(off).tolist() == pixels(before).tolist() == pixels(after).tolist()
    # A FLUX LoRA on an SD model is refused by its field before anything runs.
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(model="demo", loras=(LoraRef(name=DEMO_FLUX_LORA),)))
    assert refused.value.param == "loras.0.name" and "FLUX.1" in refused.value.message
    # A LoRA whose files do not say its family, and that fits no layer, fails saying so.
    with pytest.raises(ModelUnavailable, match="'demo-lora' does not fit this checkpoint"):
        engine.generate(request(loras=(LoraRef(name="demo-lora"),)))
    assert pixels(engine.generate(request()).images[0]).tolist() == pixels(before).tolist()


def test_family_defaults_fill_what_the_request_leaves_out(engine):
    made = engine.generate(GenerationRequest(**SMALL, seed=1)).request
    assert (made.steps, made.guidance, made.distilled_guidance, made.sampler) == (
        28,
        1.0,
        3.5,
        "Euler",
    )
    given = engine.generate(request(distilled_guidance=5.0, sampler="euler"))
    assert (given.request.steps, given.request.distilled_guidance) == (4, 5.0)
    assert given.request.sampler == "Euler"
    fields = parse_infotext(given.infotexts[0])
    assert fields["CFG scale"] == "1" and fields["Distilled CFG Scale"] == "5"


def test_true_cfg_runs_the_negative_prompt_and_distilled_guidance_steers(engine):
    plain = engine.generate(request()).images[0]
    assert max_difference(engine.generate(request(distilled_guidance=9.0)).images[0], plain) > 16
    # CFG above 1 runs the unconditional side: an empty negative prompt too, as Forge does.
    empty = engine.generate(request(guidance=4.0)).images[0]
    negative = engine.generate(request(guidance=4.0, negative_prompt="a blue whale")).images[0]
    assert max_difference(empty, plain) > 16
    assert max_difference(negative, empty) > 16


def test_sd_models_have_no_distilled_guidance(engine):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(model="demo", distilled_guidance=3.5))
    assert refused.value.param == "distilled_guidance"
    assert "SD 1.x" in refused.value.message


def test_image_to_image_starts_from_the_source(engine):
    """The source is used: another source gives another image at the same seed, and neither is
    the text-to-image one (see ``helpers.source_differences``)."""
    between, from_text = source_differences(engine, request)
    assert between > 16 and from_text > 16


def test_inpainting_repaints_only_the_mask(engine):
    """FLUX.1's inpainting pipeline, pasted back as on SD: outside the mask the source's own
    pixels, inside a new picture; with Euler only."""
    source = Image.new("RGB", (64, 64), (220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = InpaintRef(mask=ImageRef(key="m"), blur=0)
    made = engine.generate(
        request(init_image=ImageRef(key="x"), strength=1.0, inpaint=inpaint),
        init_image=source,
        mask_image=mask,
    ).images[0]
    assert made.crop((0, 0, 64, 16)).tobytes() == source.crop((0, 0, 64, 16)).tobytes()
    assert max_difference(made.crop((16, 16, 48, 48)), source.crop((16, 16, 48, 48))) > 32
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(
            request(init_image=ImageRef(key="x"), inpaint=inpaint, sampler="Heun"),
            init_image=source,
            mask_image=mask,
        )
    assert refused.value.param == "sampler"


def test_the_hires_fix_refines_each_image_upscaled(engine):
    """A1111's hires fix on FLUX.1: the first pass at 64², each image upscaled (Lanczos, or a
    latent mode) to 128² and refined as image-to-image with its own seed; progress counts both
    passes."""
    seen = []
    hires = HiresFix(scale=2.0, upscaler="Lanczos", steps=3, strength=0.5)
    made = engine.generate(
        request(steps=3, n_images=2, hires=hires),
        on_progress=lambda step, total, _preview: seen.append((step, total)),
    )
    assert [image.size for image in made.images] == [(128, 128), (128, 128)]
    # 3 first-pass steps, then each image's 2 (strength 0.5 of 3, as diffusers trims).
    assert seen == [(step, 7) for step in range(1, 8)]
    second_alone = engine.generate(request(steps=3, seed=8, hires=hires)).images[0]
    assert max_difference(made.images[1], second_alone) <= 2  # its own seed's image
    assert max_difference(made.images[0], made.images[1]) > 16
    plain = engine.generate(request(steps=3)).images[0].resize((128, 128), Image.LANCZOS)
    assert max_difference(made.images[0], plain) > 0  # refined, not only resized
    fields = parse_infotext(made.infotexts[0])
    assert fields["Hires upscale"] == "2" and fields["Hires upscaler"] == "Lanczos"
    # A1111's latent modes upscale the transformer's latents (unpacked), in the pipeline's
    # Euler and in huabu's loop alike.
    for sampler in ("Euler", "DPM++ 2M"):
        latent = hires.model_copy(update={"upscaler": "Latent"})
        upscaled = engine.generate(request(steps=3, sampler=sampler, hires=latent)).images[0]
        assert upscaled.size == (128, 128)
        alone = engine.generate(request(steps=3, sampler=sampler, hires=hires)).images[0]
        assert max_difference(upscaled, alone) > 0  # not the image upscaler's


def test_progress_previews_and_cancel(engine):
    seen, previews = [], []

    def progress(step, total, preview):
        seen.append((step, total))
        previews.append(Image.open(io.BytesIO(preview())))

    for sampler in ("Euler", "DPM++ 2M"):  # the pipeline's steps, and huabu's loop's
        seen.clear()
        previews.clear()
        engine.generate(request(steps=3, sampler=sampler), on_progress=progress)
        assert seen == [(1, 3), (2, 3), (3, 3)]
        # A live preview of each step, at the latent size (1/8), changing as it denoises.
        assert [p.size for p in previews] == [(8, 8)] * 3
        assert max_difference(previews[0], previews[-1]) > 0
    from huabu.errors import Cancelled

    with pytest.raises(Cancelled):
        engine.generate(request(steps=3), should_cancel=lambda: True)


_UNIT = ControlUnit(model="demo-controlnet", image=ImageRef(key="x"))


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"sampler": "DPM++ 2M Karras"}, "sampler"),
        ({"negative_prompt": "blurry"}, "negative_prompt"),
        ({"clip_skip": 2}, "clip_skip"),
        ({"controlnets": (_UNIT,)}, "controlnets"),
        ({"loras": (LoraRef(name="demo-xl-lora"),)}, "loras.0.name"),
        ({"embeddings": ("demo-embedding",)}, "embeddings"),
        ({"tiling": True}, "tiling"),
        ({"subseed_strength": 0.5}, "subseed_strength"),
        ({"vae": "demo-vae"}, "vae"),
    ],
)
def test_what_flux1_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(**changes))
    assert refused.value.param == param
    assert "FLUX.1" in refused.value.message


def test_flux_over_http_with_its_family_in_the_listing(server, accounts):
    key = accounts.create_key(accounts.add_user("flux@example.com", "password123").id)
    with server.client(key) as client:
        models = client.get("/huabu/v1/models").json()["data"]
        listed = {m["name"]: m for m in models}
        assert listed[DEMO_FLUX]["architecture"] == "flux1"
        assert listed["demo"]["architecture"] == "sd1"
        task = wait_finished(client, submit(client, SMALL | {"steps": 3, "seed": 3})["id"])
        assert task["state"] == "succeeded", task
        assert task["request"]["distilled_guidance"] == 3.5
        assert task["request"]["guidance"] == 1.0 and task["request"]["sampler"] == "Euler"
        picture = Image.open(io.BytesIO(httpx.get(task["images"][0]["url"]).content))
        assert picture.size == (64, 64)
        assert parse_infotext(read_parameters(picture))["Distilled CFG Scale"] == "3.5"
        # Refused at submit, naming the field; nothing queued.
        before = len(client.get("/huabu/v1/tasks").json()["data"])
        refused = client.post("/huabu/v1/generations", json=SMALL | {"sampler": "DDIM"})
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "sampler"
        assert "Euler" in refused.json()["error"]["message"]
        sd_with_flux_lora = SMALL | {"model": "demo", "loras": [{"name": DEMO_FLUX_LORA}]}
        refused = client.post("/huabu/v1/generations", json=sd_with_flux_lora)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "loras.0.name"
        assert len(client.get("/huabu/v1/tasks").json()["data"]) == before


def test_a1111_clients_run_flux_as_forge_does(server, accounts):
    """webuiapi picks FLUX by override_settings; CFG scale is true CFG (1: off) and
    ``distilled_cfg_scale`` the distilled guidance, as in Forge; its infotext says both."""
    import webuiapi

    accounts.add_user("forge@example.com", "password123")
    api = webuiapi.WebUIApi(
        baseurl=server.url + "/sdapi/v1", username="forge@example.com", password="password123"
    )
    flux = {"override_settings": {"sd_model_checkpoint": DEMO_FLUX}, "width": 64, "height": 64}
    result = api.txt2img(prompt="a fox", sampler_name="Euler", cfg_scale=1, steps=3, seed=5, **flux)
    assert result.image.size == (64, 64)
    assert result.info["sd_model_name"] == DEMO_FLUX and result.info["sampler_name"] == "Euler"
    fields = parse_infotext(result.info["infotexts"][0])
    assert fields["CFG scale"] == "1" and fields["Distilled CFG Scale"] == "3.5"
    # webuiapi's own default sampler, Euler a, in its flow form.
    default = api.txt2img(prompt="a fox", steps=3, cfg_scale=1, seed=5, **flux)
    assert default.info["sampler_name"] == "Euler a"
    assert max_difference(default.image, result.image) > 16
    # A LoRA by A1111's prompt tag.
    tagged = api.txt2img(
        prompt=f"a fox <lora:{DEMO_FLUX_LORA}:1>",
        sampler_name="Euler",
        cfg_scale=1,
        steps=3,
        seed=5,
        **flux,
    )
    assert max_difference(tagged.image, result.image) > 16
    # A sampler without a flow-matching form is refused by its A1111 name.
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="a fox", steps=3, cfg_scale=1, sampler_name="DDIM", **flux)
    assert refused.value.args[0] == 400 and '"param":"sampler_name"' in refused.value.args[1]
    auth = ("forge@example.com", "password123")
    body = {"prompt": "a fox", "steps": 3, "seed": 5, "cfg_scale": 1} | flux
    raw = httpx.post(
        server.url + "/sdapi/v1/txt2img", json=body | {"distilled_cfg_scale": 6}, auth=auth
    )
    assert raw.status_code == 200, raw.text
    info = json.loads(raw.json()["info"])
    assert parse_infotext(info["infotexts"][0])["Distilled CFG Scale"] == "6"
    sd = httpx.post(
        server.url + "/sdapi/v1/txt2img",
        json=body | {"distilled_cfg_scale": 3.5, "override_settings": {}},
        auth=auth,
    )
    assert sd.status_code == 400 and sd.json()["param"] == "distilled_cfg_scale", sd.text


def test_openai_clients_generate_with_flux(server, accounts):
    """The OpenAI SDK names the model; FLUX.1's defaults apply (OpenAI has no guidance)."""
    import openai

    key = accounts.create_key(accounts.add_user("flux-openai@example.com", "password123").id)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    ids = [model.id for model in client.models.list().data]
    assert DEMO_FLUX in ids
    result = client.images.generate(
        model=DEMO_FLUX, prompt="a red fox", size="64x64", quality="low", n=2
    )
    images = [Image.open(io.BytesIO(httpx.get(item.url).content)) for item in result.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    fields = parse_infotext(read_parameters(images[0]))
    assert fields["Sampler"] == "Euler" and fields["Distilled CFG Scale"] == "3.5"
    assert fields["CFG scale"] == "1"
    assert max_difference(images[0], images[1]) > 16


def test_dialect_defaults_give_way_to_the_familys():
    """What a kamiya, novita, v1b or SD-server caller leaves out is its dialect's default on an
    SD model and the family's own on FLUX.1; what it sends holds for both."""
    from huabu.catalog.families import fit
    from huabu.dialects.kamiya.translate import to_native
    from huabu.dialects.kamiya.wire import GenerateIn

    quiet = to_native(GenerateIn(prompts="a fox"), model=DEMO_FLUX, init_image=None)
    on_sd = fit(quiet, Architecture.SD1)
    assert (on_sd.steps, on_sd.guidance, on_sd.sampler) == (28, 7.0, "DPM++ 2M Karras")
    on_flux = fit(quiet, Architecture.FLUX1)
    assert (on_flux.steps, on_flux.guidance, on_flux.sampler) == (28, 1.0, "Euler")
    assert on_flux.distilled_guidance == 3.5
    sent = to_native(
        GenerateIn(prompts="a fox", cfg=4, step=9, sampling="Heun"),
        model=DEMO_FLUX,
        init_image=None,
    )
    on_flux = fit(sent, Architecture.FLUX1)
    assert (on_flux.steps, on_flux.guidance, on_flux.sampler) == (9, 4.0, "Heun")


def test_flux1_schnell_is_told_apart_and_runs_as_schnell(tmp_path, settings):
    """A FLUX.1 folder without the guidance embedding is [schnell]: 4 steps by default, no
    distilled guidance (asking for one is refused: it would change nothing), FLUX.1's LoRAs."""
    import json
    import shutil

    from huabu.engine.engine import Engine
    from huabu.settings import Settings

    source = settings.models_dir / "checkpoints" / DEMO_FLUX
    schnell = tmp_path / "models" / "checkpoints" / "demo-schnell"
    shutil.copytree(source, schnell)
    config = schnell / "transformer" / "config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"guidance_embeds": False}))
    (tmp_path / "models" / "loras").mkdir()
    lora = settings.models_dir / "loras" / f"{DEMO_FLUX_LORA}.safetensors"
    (tmp_path / "models" / "loras" / lora.name).symlink_to(lora)
    engine = Engine(Settings(home=tmp_path, threads=2))
    entry = engine.library.find("checkpoints", "demo-schnell")
    assert entry.architecture is Architecture.FLUX1_SCHNELL
    assert entry.describe_architecture == "FLUX.1 [schnell]"
    base = {"model": "demo-schnell", "prompt": "a fox", "width": 64, "height": 64, "seed": 3}
    made = engine.generate(GenerationRequest(**base))
    assert (made.request.steps, made.request.distilled_guidance) == (4, None)
    assert "Distilled CFG Scale" not in made.infotexts[0]
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(GenerationRequest(**base, distilled_guidance=3.5))
    assert refused.value.param == "distilled_guidance"
    with_lora = engine.generate(GenerationRequest(**base, loras=(LoraRef(name=DEMO_FLUX_LORA),)))
    assert max_difference(with_lora.images[0], made.images[0]) > 16


def test_novita_clients_generate_with_flux(server, accounts):
    """novita-client names the model and sends its own fields; FLUX.1's LoRA by novita's
    ``loras``; the model listing names the family."""
    from novita_client import NovitaClient, Txt2ImgV3LoRA
    from novita_client.proto import V3TaskResponseStatus

    key = accounts.create_key(accounts.add_user("flux-novita@example.com", "password123").id)
    client = NovitaClient(key, base_url=server.url)
    common = dict(
        model_name=DEMO_FLUX,
        prompt="a red fox",
        image_num=1,
        width=128,
        height=128,
        steps=3,
        seed=42,
        sampler_name="Euler",
        guidance_scale=1,
        response_image_type="png",
    )
    plain = client.txt2img_v3(**common)
    styled = client.txt2img_v3(
        **common, loras=[Txt2ImgV3LoRA(model_name=DEMO_FLUX_LORA, strength=1)]
    )
    pictures = []
    for result in (plain, styled):
        assert result.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED
        pictures.append(Image.open(io.BytesIO(httpx.get(result.images[0].image_url).content)))
    assert pictures[0].size == (128, 128)
    assert max_difference(pictures[0], pictures[1]) > 16
    assert parse_infotext(read_parameters(pictures[0]))["Distilled CFG Scale"] == "3.5"
