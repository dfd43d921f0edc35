"""Z-Image through diffusers' own pipelines: the tiny demo-z-image (random weights, the real
Z-Image architecture reading a Qwen3 model's hidden states through its chat template)."""

from __future__ import annotations

import pytest
import torch
from diffusers import ZImagePipeline

from helpers import max_difference, pixels, source_differences
from huabu.catalog.architectures import Architecture
from huabu.demos.zimage import DEMO_Z_IMAGE
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest
from test_service import submit, wait_finished

SMALL = {"model": DEMO_Z_IMAGE, "prompt": "a red fox in the snow", "width": 64, "height": 64}


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**(SMALL | {"steps": 4, "seed": 7} | changes))


def test_listed_as_z_image_with_turbos_defaults(engine):
    entry = engine.library.find("checkpoints", DEMO_Z_IMAGE)
    assert entry.architecture is Architecture.Z_IMAGE and entry.describe_architecture == "Z-Image"
    made = engine.generate(GenerationRequest(**SMALL, seed=1)).request
    assert (made.steps, made.guidance, made.sampler) == (9, 1.0, "Euler")


def test_seeds_prompts_and_cfg(engine):
    first = engine.generate(request(n_images=2))
    again = engine.generate(request(n_images=2))
    assert [pixels(i).tolist() for i in first.images] == [pixels(i).tolist() for i in again.images]
    assert max_difference(first.images[1], engine.generate(request(seed=8)).images[0]) <= 2
    assert max_difference(first.images[0], first.images[1]) > 16
    other = engine.generate(request(prompt="a blue whale at sea")).images[0]
    assert max_difference(first.images[0], other) > 16
    # CFG above 1 reads the negative prompt.
    guided = engine.generate(request(guidance=4.0, negative_prompt="blurry")).images[0]
    assert max_difference(first.images[0], guided) > 16


@pytest.mark.parametrize(("cfg", "scale"), [(1.0, 0.0), (4.0, 3.0)])
def test_cfg_is_a1111s_scale_and_the_pipeline_counts_from_zero(engine, settings, cfg, scale):
    """A1111's CFG scale c is ``neg + c (pos - neg)``; Z-Image's pipeline writes the same as
    ``pos + g (pos - neg)``, so it gets g = c - 1: pixels as bare diffusers gives them."""
    made = engine.generate(request(guidance=cfg, negative_prompt="blurry" if cfg > 1 else ""))
    pipe = ZImagePipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_Z_IMAGE, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        SMALL["prompt"],
        negative_prompt="blurry" if cfg > 1 else "",
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=scale,
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
        ({"width": 72}, "width"),
        ({"sampler": "Heun"}, "sampler"),
        ({"negative_prompt": "blurry"}, "negative_prompt"),  # CFG is off by default
        ({"distilled_guidance": 3.5}, "distilled_guidance"),
    ],
)
def test_what_z_image_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(**changes))
    assert refused.value.param == param


def test_z_image_over_http(server, accounts):
    key = accounts.create_key(accounts.add_user("z-image@example.com", "password123").id)
    with server.client(key) as client:
        listed = {m["name"]: m for m in client.get("/huabu/v1/models").json()["data"]}
        assert listed[DEMO_Z_IMAGE]["architecture"] == "z-image"
        task = wait_finished(client, submit(client, SMALL | {"seed": 3})["id"])
        assert task["state"] == "succeeded", task
        assert task["request"]["steps"] == 9 and task["progress"]["step"] == 9
