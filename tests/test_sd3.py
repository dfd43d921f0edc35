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


def test_sais_all_in_one_file_gives_the_folders_image_and_split_parts_load_too(
    tmp_path, settings, engine
):
    """demo-sd3-single is demo-sd3 in SAI's layout, all in one file: listed as SD 3, the
    folder's image. The same MMDiT and VAE with the text encoders beside them in ComfyUI's
    files load alike; with one missing, the request is refused naming the file and where."""
    from safetensors.torch import load_file, save_file

    from huabu.catalog.checkpoints import CheckpointHeader
    from huabu.demos.sd3_files import DEMO_SD3_SINGLE
    from huabu.engine.engine import Engine
    from huabu.settings import Settings

    entry = engine.library.find("checkpoints", DEMO_SD3_SINGLE)
    assert (entry.architecture, entry.layout) == (Architecture.SD3, "single-file")
    fields = {"prompt": "a red fox", "negative_prompt": "blurry", "width": 64, "height": 64,
              "steps": 3, "seed": 7}  # fmt: skip
    folder = engine.generate(GenerationRequest(model=DEMO_SD3, **fields)).images[0]
    single = engine.generate(GenerationRequest(model=DEMO_SD3_SINGLE, **fields)).images[0]
    assert max_difference(folder, single) <= 1
    # Split: the text encoders as files of their own, under ComfyUI's names.
    source = settings.models_dir / "checkpoints" / f"{DEMO_SD3_SINGLE}.safetensors"
    state = load_file(str(source))
    metadata = CheckpointHeader.read(source).metadata
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "text_encoders").mkdir()
    save_file(
        {k: v for k, v in state.items() if not k.startswith("text_encoders.")},
        str(models / "checkpoints" / "sd3-split.safetensors"),
        metadata=metadata,
    )
    split = Engine(Settings(home=tmp_path, threads=2))
    with pytest.raises(InvalidRequest) as refused:
        split.generate(GenerationRequest(model="sd3-split", **fields))
    assert refused.value.param == "model"
    assert "models/text_encoders/clip_l.safetensors" in str(refused.value)
    for part, name in (("clip_l", "clip_l"), ("clip_g", "clip_g"), ("t5xxl", "t5xxl_fp16")):
        prefix = f"text_encoders.{part}.transformer."
        own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        save_file(own, str(models / "text_encoders" / f"{name}.safetensors"))
    made = split.generate(GenerationRequest(model="sd3-split", **fields)).images[0]
    assert max_difference(made, folder) <= 1
