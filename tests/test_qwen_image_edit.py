"""Qwen-Image-Edit: an image plus an instruction, its text encoder (Qwen2.5-VL) seeing the
image too. demo-qwen-image-edit is a tiny one with the Qwen-Image demo's transformer; its
random weights react only faintly to the image and the prompt (about 4 of 255), so what is
asserted beyond "they change the image" is that huabu's image is diffusers' own."""

from __future__ import annotations

import io

import httpx
import pytest
import torch
from PIL import Image

from helpers import max_difference, pixels
from huabu.catalog.architectures import Architecture
from huabu.catalog.infotext import parse_infotext, read_parameters
from huabu.demos.qwen import DEMO_QWEN_IMAGE_EDIT
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, HiresFix, ImageRef, LoraRef

pytestmark = pytest.mark.slow  # each edit encodes its image at a megapixel (2 s on a CPU)

SMALL = {"model": DEMO_QWEN_IMAGE_EDIT, "prompt": "make it blue", "width": 64, "height": 64}
RED = Image.new("RGB", (96, 64), (220, 30, 30))
BLUE = Image.new("RGB", (96, 64), (30, 30, 220))


def edit(engine, image: Image.Image, **changes):
    fields = SMALL | {"steps": 3, "seed": 5, "init_image": ImageRef(key="x")} | changes
    return engine.generate(GenerationRequest(**fields), init_image=image)


def test_listed_as_qwen_image_edit_with_qwen_images_defaults(engine):
    entry = engine.library.find("checkpoints", DEMO_QWEN_IMAGE_EDIT)
    assert entry.architecture is Architecture.QWEN_IMAGE_EDIT
    made = engine.generate(GenerationRequest(**SMALL | {"steps": 2, "seed": 1}))
    assert (made.request.steps, made.request.guidance) == (2, 4.0)
    assert pixels(made.images[0]).std() > 5  # text to image, through Qwen-Image's pipeline


def test_an_edit_is_diffusers_own_and_the_image_steers_it(engine, settings):
    from diffusers import QwenImageEditPipeline, QwenImagePipeline

    from huabu.engine.vision_prompts import VisionPrompts

    made = edit(engine, RED)
    assert made.request.strength == 1.0
    folder = settings.models_dir / "checkpoints" / DEMO_QWEN_IMAGE_EDIT
    base = QwenImagePipeline.from_pretrained(folder, local_files_only=True)
    bare = QwenImageEditPipeline(
        **base.components, processor=VisionPrompts.load(folder / "processor")
    )
    bare.set_progress_bar_config(disable=True)
    expected = bare(
        image=RED.resize((64, 64)),
        prompt="make it blue",
        negative_prompt=" ",
        true_cfg_scale=4.0,
        width=64,
        height=64,
        num_inference_steps=3,
        generator=[torch.Generator().manual_seed(5)],
    ).images[0]
    assert max_difference(made.images[0], expected) <= 1
    assert max_difference(edit(engine, BLUE).images[0], made.images[0]) > 0
    assert max_difference(edit(engine, RED, prompt="a whale").images[0], made.images[0]) > 0


def test_qwen_image_loras_apply_and_edits_refuse_what_they_cannot_do(engine):
    plain = engine.generate(GenerationRequest(**SMALL | {"steps": 2, "seed": 1}))
    lora = (LoraRef(name="demo-qwen-image-lora"),)
    with_lora = engine.generate(GenerationRequest(**SMALL | {"steps": 2, "seed": 1, "loras": lora}))
    assert max_difference(with_lora.images[0], plain.images[0]) > 8
    image = ImageRef(key="x")
    for changes, param in (
        ({"init_image": image, "strength": 0.5}, "strength"),
        ({"hires": HiresFix(scale=2)}, "hires"),
        ({"sampler": "DDIM"}, "sampler"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            engine.generate(GenerationRequest(**SMALL | changes))
        assert refused.value.param == param


def test_openai_images_edit_with_qwen_image_edit(server, accounts):
    """``images.edit`` with Qwen-Image-Edit: the image and the instruction, at the image's
    size, with the family's true CFG 4 (and ``quality``'s steps)."""
    import openai

    key = accounts.create_key(accounts.add_user("qwen-edit@example.com", "password123").id)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    data = io.BytesIO()
    RED.resize((64, 64)).save(data, format="PNG")
    result = client.images.edit(
        model=DEMO_QWEN_IMAGE_EDIT,
        image=("red.png", data.getvalue()),
        prompt="make it blue",
        quality="low",
    )
    picture = Image.open(io.BytesIO(httpx.get(result.data[0].url).content))
    assert picture.size == (64, 64)
    fields = parse_infotext(read_parameters(picture))
    assert fields["Steps"] == "12" and fields["CFG scale"] == "4"
    assert fields["Denoising strength"] == "1"


def test_with_a_mask_it_edits_inside_it_only(engine):
    """Inpainting on Qwen-Image-Edit through its own inpainting pipeline: the image is also
    what its text encoder sees; outside the mask its pixels stay."""
    from huabu.native import InpaintRef

    source = RED.resize((64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 40, 40))
    inpaint = InpaintRef(mask=ImageRef(key="m"), blur=0)
    made = engine.generate(
        GenerationRequest(**SMALL, steps=3, seed=5, init_image=ImageRef(key="x"), inpaint=inpaint),
        init_image=source,
        mask_image=mask,
    ).images[0]
    assert made.crop((48, 48, 64, 64)).tobytes() == source.crop((48, 48, 64, 64)).tobytes()
    assert max_difference(made.crop((8, 8, 32, 32)), source.crop((8, 8, 32, 32))) > 32
