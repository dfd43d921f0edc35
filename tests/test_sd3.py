"""SD 3.x through diffusers' own pipelines: the tiny demo-sd3 (random weights, the real SD 3
architecture), in the engine and through a real `huabu serve`."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from helpers import max_difference, pixels, source_differences
from huabu.catalog.architectures import Architecture
from huabu.demos.sd3 import DEMO_SD3
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, LoraRef
from test_service import submit, wait_finished

SMALL = {"model": DEMO_SD3, "prompt": "a red fox in the snow", "width": 64, "height": 64}


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**(SMALL | {"steps": 4, "seed": 7} | changes))


def test_listed_as_sd3_with_its_defaults(engine):
    entry = engine.library.find("checkpoints", DEMO_SD3)
    assert entry.architecture is Architecture.SD3 and entry.describe_architecture == "SD 3.x"
    made = engine.generate(GenerationRequest(**SMALL, seed=1)).request
    assert (made.steps, made.guidance, made.sampler, made.distilled_guidance) == (
        28,
        3.5,
        "Euler",
        None,
    )


def test_seeds_prompts_and_the_negative_prompt(engine):
    first = engine.generate(request(n_images=2))
    again = engine.generate(request(n_images=2))
    assert [pixels(i).tolist() for i in first.images] == [pixels(i).tolist() for i in again.images]
    assert max_difference(first.images[1], engine.generate(request(seed=8)).images[0]) <= 2
    assert max_difference(first.images[0], first.images[1]) > 16
    other = engine.generate(request(prompt="a blue whale at sea")).images[0]
    assert max_difference(first.images[0], other) > 16
    # True CFG (guidance 3.5 by default here) reads the negative prompt.
    negative = engine.generate(request(negative_prompt="blurry")).images[0]
    assert max_difference(first.images[0], negative) > 16


def test_the_engine_is_bare_diffusers_on_the_same_request(engine, settings):
    made = engine.generate(request(guidance=5.0, negative_prompt="blurry"))
    pipe = StableDiffusion3Pipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_SD3, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        SMALL["prompt"],
        negative_prompt="blurry",
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(made.images[0], bare) <= 1


def test_image_to_image_starts_from_the_source(engine):
    """The source is used: another source gives another image at the same seed, and neither is
    the text-to-image one (see ``helpers.source_differences``)."""
    between, from_text = source_differences(engine, request)
    assert between > 16 and from_text > 16


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"width": 72}, "width"),  # SD 3's latents are cut in 2×2 patches: multiples of 16
        ({"sampler": "Heun"}, "sampler"),  # (Euler a and DPM++ 2M run: test_flow_families)
        ({"loras": (LoraRef(name="demo-flux-lora"),)}, "loras.0.name"),  # FLUX.1's
        ({"distilled_guidance": 3.5}, "distilled_guidance"),
        ({"guidance": 1.0, "negative_prompt": "blurry"}, "negative_prompt"),
        ({"clip_skip": 2}, "clip_skip"),
    ],
)
def test_what_sd3_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(**changes))
    assert refused.value.param == param


def test_sd3_over_http(server, accounts):
    key = accounts.create_key(accounts.add_user("sd3@example.com", "password123").id)
    with server.client(key) as client:
        listed = {m["name"]: m for m in client.get("/huabu/v1/models").json()["data"]}
        assert listed[DEMO_SD3]["architecture"] == "sd3"
        task = wait_finished(client, submit(client, SMALL | {"steps": 3, "seed": 3})["id"])
        assert task["state"] == "succeeded", task
        assert task["request"]["guidance"] == 3.5 and task["progress"]["step"] == 3
        refused = client.post("/huabu/v1/generations", json=SMALL | {"height": 72})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "height"
