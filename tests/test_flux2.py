"""FLUX.2 [klein] through diffusers' own pipeline: the tiny demo-flux2-klein (random weights,
the real architecture: a FLUX.2 transformer over a Qwen3 text encoder), in the engine; an image
is a reference it edits from."""

from __future__ import annotations

import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline
from PIL import Image

from helpers import max_difference, pixels
from huabu.catalog.architectures import Architecture
from huabu.demos.flux import DEMO_FLUX_LORA
from huabu.demos.flux2 import DEMO_FLUX2, DEMO_FLUX2_KLEIN
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, HiresFix, ImageRef, InpaintRef, LoraRef

SMALL = {"model": DEMO_FLUX2_KLEIN, "prompt": "a red fox in the snow", "width": 64, "height": 64}
BLUE = Image.new("RGB", (64, 64), (30, 30, 220))


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**(SMALL | {"seed": 7} | changes))


def test_listed_as_flux2_klein_with_its_defaults(engine):
    entry = engine.library.find("checkpoints", DEMO_FLUX2_KLEIN)
    assert entry.architecture is Architecture.FLUX2_KLEIN
    assert entry.describe_architecture == "FLUX.2 [klein]"
    made = engine.generate(GenerationRequest(**SMALL, seed=1)).request
    assert (made.steps, made.guidance, made.sampler) == (4, 1.0, "Euler")


def test_seeds_and_prompts_steer_and_it_is_bare_diffusers(engine, settings):
    first = engine.generate(request(n_images=2))
    again = engine.generate(request(n_images=2))
    assert [pixels(i).tolist() for i in first.images] == [pixels(i).tolist() for i in again.images]
    assert max_difference(first.images[0], first.images[1]) > 16
    other = engine.generate(request(prompt="a blue whale at sea")).images[0]
    assert max_difference(first.images[0], other) > 16
    pipe = Flux2KleinPipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_FLUX2_KLEIN, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        prompt=SMALL["prompt"],
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=1.0,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(first.images[0], bare) <= 1


def test_a_reference_image_is_read_and_the_samplers_run(engine):
    plain = engine.generate(request()).images[0]
    referenced = engine.generate(request(init_image=ImageRef(key="x")), init_image=BLUE)
    assert referenced.request.strength == 1.0
    # (Barely, on the tiny demo: a few levels, as with Kontext's.)
    assert max_difference(referenced.images[0], plain) > 0
    for sampler in ("Euler a", "DPM++ 2M"):
        assert max_difference(engine.generate(request(sampler=sampler)).images[0], plain) > 0


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"negative_prompt": "blurry"}, "negative_prompt"),
        ({"init_image": ImageRef(key="x"), "strength": 0.5}, "strength"),
        ({"hires": HiresFix(upscaler="Lanczos")}, "hires"),
        ({"sampler": "Heun"}, "sampler"),
        ({"width": 72}, "width"),
    ],
)
def test_what_klein_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(
            request(**changes), init_image=BLUE, mask_image=Image.new("L", (64, 64), 255)
        )
    assert refused.value.param == param


def test_flux2_klein_over_http_with_its_family_in_the_listing(server, accounts):
    from test_service import submit, wait_finished

    key = accounts.create_key(accounts.add_user("klein@example.com", "password123").id)
    with server.client(key) as client:
        listed = {m["name"]: m for m in client.get("/huabu/v1/models").json()["data"]}
        assert listed[DEMO_FLUX2_KLEIN]["architecture"] == "flux2-klein"
        assert listed[DEMO_FLUX2_KLEIN]["label"] == "FLUX.2 [klein]"
        task = wait_finished(client, submit(client, SMALL | {"seed": 3})["id"])
        assert task["state"] == "succeeded", task
        assert task["request"]["steps"] == 4 and len(task["images"]) == 1


DEV = {"model": DEMO_FLUX2, "prompt": "a red fox in the snow", "width": 64, "height": 64}


def test_flux2_dev_runs_as_published_and_is_bare_diffusers(engine, settings):
    """FLUX.2 [dev]: 50 steps and guidance 4 through its guidance embedding by default; its
    folder's tokenizer is published as a PixtralProcessor (which needs torchvision): huabu
    reads the tokenizer in it. Same seed, same pixels; the image is diffusers' own."""
    from transformers import AutoTokenizer

    entry = engine.library.find("checkpoints", DEMO_FLUX2)
    assert entry.architecture is Architecture.FLUX2 and entry.describe_architecture == "FLUX.2"
    fields = DEV | {"steps": 3, "seed": 7}
    made = engine.generate(GenerationRequest(**fields))
    assert made.request.distilled_guidance == 4.0 and made.request.guidance == 1.0
    assert "Distilled CFG Scale: 4" in made.infotexts[0]
    assert (
        pixels(made.images[0]).tolist()
        == pixels(engine.generate(GenerationRequest(**fields)).images[0]).tolist()
    )
    folder = settings.models_dir / "checkpoints" / DEMO_FLUX2
    pipe = Flux2Pipeline.from_pretrained(folder, tokenizer=None, local_files_only=True)
    pipe.register_modules(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"))
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        prompt=DEV["prompt"],
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=4.0,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(made.images[0], bare) <= 1
    # Guidance steers it; a reference image is read (faintly, on the tiny demo).
    guided = engine.generate(GenerationRequest(**fields, distilled_guidance=1.5)).images[0]
    assert max_difference(guided, made.images[0]) > 16
    referenced = engine.generate(
        GenerationRequest(**fields, init_image=ImageRef(key="x")), init_image=BLUE
    )
    assert referenced.request.strength == 1.0
    assert max_difference(referenced.images[0], made.images[0]) > 0


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"negative_prompt": "blurry"}, "negative_prompt"),
        ({"loras": (LoraRef(name=DEMO_FLUX_LORA),)}, "loras.0.name"),  # FLUX.1's LoRA
        (
            {"init_image": ImageRef(key="x"), "inpaint": InpaintRef(mask=ImageRef(key="m"))},
            "inpaint",
        ),
        ({"hires": HiresFix(upscaler="Lanczos")}, "hires"),
        ({"sampler": "Heun"}, "sampler"),
        ({"guidance": 3.5}, "guidance"),
    ],
)
def test_what_flux2_dev_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(
            GenerationRequest(**(DEV | changes)),
            init_image=BLUE,
            mask_image=Image.new("L", (64, 64), 255),
        )
    assert refused.value.param == param


@pytest.mark.parametrize("model", [DEMO_FLUX2_KLEIN, DEMO_FLUX2])
def test_flux2_loras_change_the_image_and_leave_nothing_behind(engine, model):
    """FLUX.2's LoRAs (diffusers' layout; their fused single-block projection tells them from
    FLUX.1's) are listed as FLUX.2's and load through its pipeline's loader."""
    lora = f"{model}-lora"
    assert engine.library.find("loras", lora).architecture is Architecture.FLUX2
    fields = {"model": model, "prompt": "a red fox", "width": 64, "height": 64, "steps": 2}
    plain = engine.generate(GenerationRequest(**fields, seed=3)).images[0]
    styled = engine.generate(GenerationRequest(**fields, seed=3, loras=(LoraRef(name=lora),)))
    assert max_difference(styled.images[0], plain) > 16
    off = engine.generate(
        GenerationRequest(**fields, seed=3, loras=(LoraRef(name=lora, weight=0),))
    )
    assert pixels(off.images[0]).tolist() == pixels(plain).tolist()
    again = engine.generate(GenerationRequest(**fields, seed=3)).images[0]
    assert pixels(again).tolist() == pixels(plain).tolist()


def test_klein_edits_inside_a_mask_only(engine):
    """Inpainting on [klein] through its own inpainting pipeline: the image is its own
    reference, and outside the mask its pixels stay."""
    source = Image.new("RGB", (64, 64), (220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    made = engine.generate(
        request(init_image=ImageRef(key="x"), inpaint=InpaintRef(mask=ImageRef(key="m"), blur=0)),
        init_image=source,
        mask_image=mask,
    ).images[0]
    assert made.crop((48, 48, 64, 64)).tobytes() == source.crop((48, 48, 64, 64)).tobytes()
    assert max_difference(made.crop((8, 8, 32, 32)), source.crop((8, 8, 32, 32))) > 32


@pytest.mark.parametrize("model", [DEMO_FLUX2_KLEIN, DEMO_FLUX2])
def test_each_step_is_previewed_live(engine, model):
    """FLUX.2's packed tokens, spread back to its VAE's channels, at the latent size (1/8)."""
    import io

    previews = []

    def progress(step, total, preview):
        previews.append(Image.open(io.BytesIO(preview())))

    fields = {"model": model, "prompt": "a red fox", "width": 64, "height": 96, "steps": 3}
    engine.generate(GenerationRequest(**fields, seed=2), on_progress=progress)
    assert [p.size for p in previews] == [(8, 12)] * 3
    assert max_difference(previews[0], previews[-1]) > 0


def test_the_flux2_map_reads_its_vaes_32_channels():
    from huabu.engine.previews import approx_flow

    latent = torch.zeros(32, 2, 2)
    assert approx_flow(latent, "flux2").getpixel((0, 0)) == (123, 118, 117)  # the offset alone
    latent[3] = 1.0  # the channel that brightens most, bluest
    assert approx_flow(latent, "flux2").getpixel((0, 0)) == (151, 157, 163)


def test_the_base_klein_takes_cfg_with_a_negative_prompt_and_the_distilled_one_refuses_it(
    tmp_path, settings, engine
):
    """A [klein] folder whose model_index says it is not distilled (the base model) runs CFG
    with the negative prompt, as diffusers does given its embeddings; the distilled demo has
    no CFG, so a guidance above 1 is refused naming it rather than ignored."""
    import json
    import shutil

    from huabu.engine.engine import Engine
    from huabu.settings import Settings

    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(guidance=3.0))
    assert refused.value.param == "guidance"
    base = tmp_path / "models" / "checkpoints" / "klein-base"
    shutil.copytree(settings.models_dir / "checkpoints" / DEMO_FLUX2_KLEIN, base)
    index = base / "model_index.json"
    index.write_text(json.dumps(json.loads(index.read_text()) | {"is_distilled": False}))
    own = Engine(Settings(home=tmp_path, threads=2))
    fields = SMALL | {"model": "klein-base", "steps": 3, "seed": 7, "guidance": 3.0}
    plain = own.generate(GenerationRequest(**fields)).images[0]
    steered = own.generate(GenerationRequest(**fields, negative_prompt="snow")).images[0]
    assert max_difference(plain, steered) > 0
    pipe = Flux2KleinPipeline.from_pretrained(base, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    negative, _ = pipe.encode_prompt(prompt="snow")
    bare = pipe(
        prompt=SMALL["prompt"],
        negative_prompt_embeds=negative,
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(steered, bare) <= 1
