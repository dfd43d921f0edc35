"""FLUX.1 Kontext: instruction editing, an image plus a prompt. The tiny demo-flux-kontext
(FLUX.1's demo weights in a Kontext folder) in the engine, and through a real `huabu serve`
with the OpenAI SDK's ``images.edit`` and webuiapi's img2img."""

from __future__ import annotations

import io

import httpx
import pytest
import torch
from diffusers import FluxKontextPipeline
from PIL import Image

from helpers import max_difference, pixels
from huabu.catalog.architectures import Architecture
from huabu.catalog.infotext import parse_infotext, read_parameters
from huabu.demos.flux import DEMO_FLUX_KONTEXT, DEMO_FLUX_LORA
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, ImageRef, InpaintRef, LoraRef

SMALL = {"model": DEMO_FLUX_KONTEXT, "prompt": "make it blue", "width": 64, "height": 64}
RED = Image.new("RGB", (64, 64), (220, 30, 30))
BLUE = Image.new("RGB", (64, 64), (30, 30, 220))


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**(SMALL | {"steps": 3, "seed": 7} | changes))


def edit(engine, image: Image.Image, **changes):
    return engine.generate(request(init_image=ImageRef(key="x"), **changes), init_image=image)


def test_the_demo_is_a_kontext_folder_with_kontexts_defaults(engine):
    entry = engine.library.find("checkpoints", DEMO_FLUX_KONTEXT)
    assert entry.architecture is Architecture.FLUX1_KONTEXT
    assert entry.describe_architecture == "FLUX.1 Kontext"
    made = edit(engine, RED, steps=2).request
    # Kontext [dev]'s published use: distilled guidance 2.5, Euler, no true CFG; the edit is
    # drawn anew from noise (strength 1).
    assert (made.distilled_guidance, made.guidance, made.sampler) == (2.5, 1.0, "Euler")
    assert made.strength == 1.0
    assert engine.generate(GenerationRequest(**SMALL, seed=1)).request.steps == 28


def test_an_edit_is_bare_diffusers_reading_the_image(engine, settings):
    """The image to edit is read beside the prompt at the output size (not moved to one of
    Kontext's trained sizes); what huabu adds changes no pixel."""
    made = edit(engine, RED).images[0]
    pipe = FluxKontextPipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_FLUX_KONTEXT, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        image=RED,
        prompt=SMALL["prompt"],
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=2.5,
        generator=[torch.Generator().manual_seed(7)],
        _auto_resize=False,
        max_area=64 * 64,
    ).images[0]
    assert made.size == (64, 64)
    assert max_difference(made, bare) <= 1
    # The image steers the result: another image, another edit; the same one, the same pixels.
    # (Barely, on the tiny demo: its 16 image tokens sit beside 512 text tokens under the
    # near-uniform attention of random weights, so a few levels are what the image moves.)
    assert max_difference(made, edit(engine, BLUE).images[0]) > 0
    assert pixels(edit(engine, RED).images[0]).tolist() == pixels(made).tolist()
    # With no image it draws from the prompt alone, as FLUX.1 [dev] does.
    assert max_difference(engine.generate(request()).images[0], made) > 0


def test_flux1_loras_apply_to_kontext_and_leave_nothing_behind(engine):
    before = edit(engine, RED).images[0]
    styled = edit(engine, RED, loras=(LoraRef(name=DEMO_FLUX_LORA),)).images[0]
    off = edit(engine, RED, loras=(LoraRef(name=DEMO_FLUX_LORA, weight=0),)).images[0]
    assert max_difference(styled, before) > 16
    assert pixels(off).tolist() == pixels(before).tolist()
    assert pixels(edit(engine, RED).images[0]).tolist() == pixels(before).tolist()


_MASK = InpaintRef(mask=ImageRef(key="m"))


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"strength": 0.5}, "strength"),  # an edit is drawn anew: no image-to-image strength
        ({"inpaint": _MASK, "strength": 0.5}, "strength"),  # inside a mask too
        ({"sampler": "Heun"}, "sampler"),
        ({"negative_prompt": "blurry"}, "negative_prompt"),
    ],
)
def test_what_kontext_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(
            request(init_image=ImageRef(key="x"), **changes),
            init_image=RED,
            mask_image=Image.new("L", (64, 64), 255),
        )
    assert refused.value.param == param
    assert "FLUX.1 Kontext" in refused.value.message or "Kontext" in refused.value.message


def test_an_edit_inside_a_mask_keeps_the_rest(engine):
    """Kontext's inpainting pipeline: the prompt's edit inside the mask, the image's own
    pixels outside it (pasted back as on SD)."""
    source = Image.new("RGB", (64, 64), (220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    made = engine.generate(
        request(init_image=ImageRef(key="x"), inpaint=InpaintRef(mask=ImageRef(key="m"), blur=0)),
        init_image=source,
        mask_image=mask,
    ).images[0]
    assert made.crop((0, 0, 64, 16)).tobytes() == source.crop((0, 0, 64, 16)).tobytes()
    assert max_difference(made.crop((16, 16, 48, 48)), source.crop((16, 16, 48, 48))) > 32


def test_an_editing_model_takes_no_hires_fix(engine):
    from huabu.native import HiresFix

    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(hires=HiresFix(upscaler="Lanczos")))
    assert refused.value.param == "hires" and "Kontext" in refused.value.message


def test_openai_clients_edit_with_kontext(server, accounts):
    """``images.edit`` with an editing model is an instruction: the image and the prompt, at
    the image's size (in the family's multiples of 16); with a mask, only inside it."""
    import openai

    key = accounts.create_key(accounts.add_user("kontext@example.com", "password123").id)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    assert DEMO_FLUX_KONTEXT in [model.id for model in client.models.list().data]

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    made = []
    for image in (RED.resize((72, 72)), BLUE.resize((72, 72))):
        result = client.images.edit(
            model=DEMO_FLUX_KONTEXT, image=("in.png", png(image)), prompt="make it green"
        )
        made.append(Image.open(io.BytesIO(httpx.get(result.data[0].url).content)))
    # At the image's size, in multiples of 16 (72: 64, the multiple below it).
    assert made[0].size == (64, 64) and max_difference(made[0], made[1]) > 0
    fields = parse_infotext(read_parameters(made[0]))
    assert fields["Steps"] == "28" and fields["Distilled CFG Scale"] == "2.5"
    assert fields["Denoising strength"] == "1"
    mask = Image.new("RGBA", (72, 72), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 40, 40))
    masked = client.images.edit(
        model=DEMO_FLUX_KONTEXT,
        image=("in.png", png(RED.resize((64, 64)))),
        mask=("mask.png", png(mask.resize((64, 64)))),
        prompt="a hat",
    )
    hat = Image.open(io.BytesIO(httpx.get(masked.data[0].url).content)).convert("RGB")
    corner = RED.crop((48, 48, 64, 64)).tobytes()
    assert hat.crop((48, 48, 64, 64)).tobytes() == corner  # outside the mask: the image's
    assert max_difference(hat.crop((8, 8, 32, 32)), RED.crop((8, 8, 32, 32))) > 32


def test_a1111_clients_edit_with_kontext_through_img2img(server, accounts):
    """webuiapi's img2img on Kontext: the init image is the image to edit. Its default
    denoising strength (0.75) has no meaning there and is refused by its A1111 name; 1 runs."""
    import webuiapi

    accounts.add_user("kontext-forge@example.com", "password123")
    api = webuiapi.WebUIApi(
        baseurl=server.url + "/sdapi/v1",
        username="kontext-forge@example.com",
        password="password123",
    )
    kontext = {
        "override_settings": {"sd_model_checkpoint": DEMO_FLUX_KONTEXT},
        "width": 64,
        "height": 64,
        "steps": 3,
        "seed": 5,
        "cfg_scale": 1,
        "sampler_name": "Euler",
    }
    red = api.img2img(images=[RED], prompt="make it blue", denoising_strength=1, **kontext)
    blue = api.img2img(images=[BLUE], prompt="make it blue", denoising_strength=1, **kontext)
    assert red.image.size == (64, 64) and max_difference(red.image, blue.image) > 0
    assert red.info["sd_model_name"] == DEMO_FLUX_KONTEXT
    with pytest.raises(RuntimeError) as refused:
        api.img2img(images=[RED], prompt="make it blue", **kontext)
    assert refused.value.args[0] == 400
    assert '"param":"denoising_strength"' in refused.value.args[1]
