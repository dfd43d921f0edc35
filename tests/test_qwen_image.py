"""Qwen-Image through diffusers' own pipelines: the tiny demo-qwen-image (random weights, the
real Qwen-Image architecture reading a Qwen2.5-VL model's hidden states, a Wan-style VAE)."""

from __future__ import annotations

import pytest
import torch
from diffusers import QwenImagePipeline

from helpers import max_difference, pixels, source_differences
from huabu.catalog.architectures import Architecture
from huabu.demos.qwen import DEMO_QWEN_IMAGE
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest
from test_service import submit, wait_finished

SMALL = {"model": DEMO_QWEN_IMAGE, "prompt": "a red fox in the snow", "width": 64, "height": 64}


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**(SMALL | {"steps": 4, "seed": 7} | changes))


def test_listed_as_qwen_image_with_its_defaults(engine):
    entry = engine.library.find("checkpoints", DEMO_QWEN_IMAGE)
    assert entry.architecture is Architecture.QWEN_IMAGE
    assert entry.describe_architecture == "Qwen-Image"
    made = engine.generate(GenerationRequest(**SMALL, seed=1, steps=3)).request
    assert (made.guidance, made.sampler) == (4.0, "Euler")
    assert engine.generate(GenerationRequest(**SMALL, seed=1, guidance=1.0)).request.steps == 50


def test_seeds_prompts_and_cfg(engine):
    first = engine.generate(request(n_images=2))
    again = engine.generate(request(n_images=2))
    assert [pixels(i).tolist() for i in first.images] == [pixels(i).tolist() for i in again.images]
    assert max_difference(first.images[1], engine.generate(request(seed=8)).images[0]) <= 2
    assert max_difference(first.images[0], first.images[1]) > 16
    # (Qwen-Image's system prompt template, the same for every prompt, is most of what the
    # demo's small random text model reads: another prompt moves pixels a little.)
    other = engine.generate(request(prompt="a blue whale at sea")).images[0]
    assert max_difference(first.images[0], other) > 0
    negative = engine.generate(request(negative_prompt="blurry")).images[0]
    assert max_difference(first.images[0], negative) > 0
    unguided = engine.generate(request(guidance=1.0)).images[0]
    assert max_difference(first.images[0], unguided) > 0


@pytest.mark.parametrize(("cfg", "negative"), [(1.0, None), (4.0, " "), (3.0, "blurry")])
def test_cfg_is_qwen_images_true_cfg(engine, settings, cfg, negative):
    """guidance is true CFG; above 1 it runs with the negative prompt (a space for an empty
    one, which diffusers needs to run it): pixels as bare diffusers gives them."""
    made = engine.generate(
        request(guidance=cfg, negative_prompt="blurry" if negative == "blurry" else "")
    )
    pipe = QwenImagePipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_QWEN_IMAGE, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        SMALL["prompt"],
        negative_prompt=negative,
        width=64,
        height=64,
        num_inference_steps=4,
        true_cfg_scale=cfg,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(made.images[0], bare) <= 1


def test_image_to_image_starts_from_the_source(engine):
    """The source is used: another source gives another image at the same seed, and neither is
    the text-to-image one (see ``helpers.source_differences``)."""
    between, from_text = source_differences(engine, request)
    assert between > 8 and from_text > 8


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"width": 72}, "width"),
        ({"sampler": "Heun"}, "sampler"),
        ({"guidance": 1.0, "negative_prompt": "blurry"}, "negative_prompt"),
        ({"distilled_guidance": 3.5}, "distilled_guidance"),
    ],
)
def test_what_qwen_image_cannot_do_is_refused_by_field(engine, changes, param):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(**changes))
    assert refused.value.param == param


def test_qwen_image_over_http(server, accounts):
    key = accounts.create_key(accounts.add_user("qwen@example.com", "password123").id)
    with server.client(key) as client:
        listed = {m["name"]: m for m in client.get("/huabu/v1/models").json()["data"]}
        assert listed[DEMO_QWEN_IMAGE]["architecture"] == "qwen-image"
        task = wait_finished(client, submit(client, SMALL | {"seed": 3, "steps": 3})["id"])
        assert task["state"] == "succeeded", task
        assert task["request"]["guidance"] == 4.0 and task["progress"]["step"] == 3
