"""SDXL end to end on the tiny SDXL demo: both layouts load to the same model, and its LoRA
(kohya's SDXL layout), embedding (clip_l/clip_g), ControlNet and IP-Adapter each change the
image, leave nothing behind, and run with the k-diffusion samplers too. Extras made for the
other family are refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REF, max_difference
from huabu.catalog.architectures import Architecture
from huabu.catalog.checkpoints import CheckpointHeader
from huabu.catalog.library import ModelLibrary
from huabu.engine.single_file import derive_configs
from huabu.errors import HuabuError
from huabu.native import ControlUnit, IpAdapterRef, LoraRef

RED = Image.new("RGB", (64, 64), (220, 20, 20))
BLUE = Image.new("RGB", (64, 64), (20, 20, 220))
STRIPES = Image.fromarray(np.kron([[0, 255] * 4] * 8, np.ones((8, 8))).astype(np.uint8))


@pytest.fixture
def xl(small):
    def make(**changes):
        return small(**({"model": "demo-xl", "steps": 6} | changes))

    return make


def control(model="demo-xl-controlnet") -> tuple[ControlUnit, ...]:
    return (ControlUnit(model=model, image=REF, preprocessor="none"),)


def test_the_library_knows_the_sdxl_demo_and_its_extras(settings):
    library = ModelLibrary(settings)
    for kind, name in [
        ("checkpoints", "demo-xl"),
        ("checkpoints", "demo-xl-single"),
        ("loras", "demo-xl-lora"),
        ("embeddings", "demo-xl-embedding"),
        ("controlnet", "demo-xl-controlnet"),
    ]:
        assert library.find(kind, name).architecture is Architecture.SDXL, name
    # The demo is trained at 512² (SDXL's 1024² scaled down): its default size says so.
    assert library.find("checkpoints", "demo-xl").native_size == 512
    assert library.find("checkpoints", "demo-xl-single").native_size == 512
    assert library.find("loras", "demo-lora").architecture is None  # nothing tells


def test_sdxl_configs_derived_from_the_single_file_match_the_folder(settings):
    checkpoints = settings.models_dir / "checkpoints"
    header = CheckpointHeader.read(checkpoints / "demo-xl-single.safetensors")
    derived = derive_configs(header, Architecture.SDXL)
    for component in ("unet", "vae", "text_encoder", "text_encoder_2"):
        actual = json.loads((checkpoints / "demo-xl" / component / "config.json").read_text())
        for key, value in derived[component].items():
            # The VAE's sample_size is not in its tensors, and nothing reads it.
            skip = key == "architectures" or (component, key) == ("vae", "sample_size")
            if key.startswith("_") or key not in actual or skip:
                continue
            assert actual[key] == value or (
                isinstance(value, list) and list(actual[key]) == value
            ), (component, key, actual[key], value)


def samplers(*names: str) -> list:
    """The first runs in make test-fast; the others (the k-diffusion ones are the slow part)
    in make test."""
    return [names[0], *(pytest.param(name, marks=pytest.mark.slow) for name in names[1:])]


@pytest.mark.parametrize("sampler", samplers("Euler", "DPM++ 2M Karras", "DPM fast"))
def test_both_layouts_are_the_same_model(engine, xl, sampler):
    folder = engine.generate(xl(sampler=sampler)).images[0]
    single = engine.generate(xl(sampler=sampler, model="demo-xl-single")).images[0]
    assert np.asarray(folder).std() > 1  # an image, not a flat or NaN-black field
    assert max_difference(folder, single) <= 1


def test_both_text_encoders_and_the_pooled_embedding_condition_the_unet(engine, xl):
    """SDXL's conditioning: both encoders' penultimate states side by side (32 + 48 wide),
    the second's pooled projection, and zeros for an empty negative prompt, as SDXL's
    ``force_zeros_for_empty_prompt`` says; a non-square size runs too."""
    from helpers import loaded

    engine.generate(xl())
    encoder = loaded(engine, "demo-xl").prompt_encoder
    conditioning = encoder.encode("a fox", "", 1)
    assert conditioning.embeds.shape[-1] == 80 and tuple(conditioning.pooled.shape) == (1, 32)
    assert not conditioning.negative_pooled.any() and not conditioning.negative_embeds.any()
    assert encoder.encode("a fox", "blurry", 1).negative_pooled.any()
    assert engine.generate(xl(width=72)).images[0].size == (72, 64)


@pytest.mark.parametrize("sampler", samplers("Euler", "DPM fast", "DPM adaptive", "DPM++ 2S a"))
def test_sdxl_extras_change_the_image_and_leave_nothing_behind(engine, xl, sampler):
    base = engine.generate(xl(sampler=sampler)).images[0]
    changed = {
        "lora": engine.generate(xl(sampler=sampler, loras=(LoraRef(name="demo-xl-lora"),))),
        "embedding": engine.generate(xl(sampler=sampler, prompt="a red fox demo-xl-embedding")),
        "controlnet": engine.generate(
            xl(sampler=sampler, controlnets=control()), control_images=[STRIPES]
        ),
        "ip-adapter": engine.generate(
            xl(
                sampler=sampler,
                ip_adapter=IpAdapterRef(name="demo-xl-ip-adapter", image=REF, scale=1.0),
            ),
            ip_image=RED,
        ),
    }
    for what, result in changed.items():
        assert max_difference(base, result.images[0]) > 2, what
    other_map = engine.generate(xl(sampler=sampler, controlnets=control()), control_images=[RED])
    assert max_difference(changed["controlnet"].images[0], other_map.images[0]) > 2
    assert max_difference(base, engine.generate(xl(sampler=sampler)).images[0]) == 0
    # Switched off (weight 0, scale 0), each is the base model exactly.
    off_lora = engine.generate(
        xl(sampler=sampler, loras=(LoraRef(name="demo-xl-lora", weight=0.0),))
    )
    off_adapter = engine.generate(
        xl(
            sampler=sampler,
            ip_adapter=IpAdapterRef(name="demo-xl-ip-adapter", image=REF, scale=0.0),
        ),
        ip_image=BLUE,
    )
    assert max_difference(base, off_lora.images[0]) == 0
    assert max_difference(base, off_adapter.images[0]) == 0


@pytest.mark.slow  # an engine of its own, or a pipeline run outside the engine
def test_single_file_sdxl_controlnets_load_in_each_layout(settings, xl, tmp_path):
    """An SDXL ControlNet as one file: in A1111's layout (``control_model.*``, its pooled-text
    and size embedding as ``label_emb``) and under diffusers' own names (how the
    ``diffusers_xl_*`` downloads come): the same weights as the folder, so the same image. A
    shallower "mid" ControlNet (fewer transformer layers than its base) loads too."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from huabu.demos.ldm_layout import controlnet_to_ldm
    from huabu.demos.sd import build_controlnet
    from huabu.demos.xl import build_pipeline
    from huabu.engine.engine import Engine
    from huabu.settings import Settings

    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "demo-xl").symlink_to(settings.models_dir / "checkpoints" / "demo-xl")
    folder = models / "controlnet"
    folder.mkdir()
    (folder / "demo-xl-controlnet").symlink_to(
        settings.models_dir / "controlnet" / "demo-xl-controlnet"
    )
    net = ControlNetModel.from_pretrained(folder / "demo-xl-controlnet")
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(controlnet_to_ldm(state, dict(net.config)), str(folder / "a1111.safetensors"))
    save_file(state, str(folder / "diffusers.safetensors"))
    pipe = build_pipeline()
    pipe.unet.register_to_config(transformer_layers_per_block=[1, 1])
    shallow = build_controlnet(
        pipe.__class__(**{**pipe.components, "unet": type(pipe.unet)(**dict(pipe.unet.config))})
    )
    save_file(
        {k: v.contiguous() for k, v in shallow.state_dict().items()},
        str(folder / "mid.safetensors"),
    )
    engine = Engine(Settings(home=tmp_path, threads=2))

    def guided(model: str) -> Image.Image:
        unit = ControlUnit(model=model, image=REF, preprocessor="none")
        return engine.generate(xl(controlnets=(unit,)), control_images=[STRIPES]).images[0]

    base = guided("demo-xl-controlnet")
    assert max_difference(base, guided("a1111")) <= 1
    assert max_difference(base, guided("diffusers")) <= 1
    assert max_difference(engine.generate(xl()).images[0], guided("mid")) > 2


def test_sdxl_img2img_and_inpainting_with_a_controlnet(engine, xl):
    from huabu.native import InpaintRef

    source = Image.new("RGB", (64, 64), (90, 160, 60))
    plain = engine.generate(xl(init_image=REF, strength=0.6), init_image=source).images[0]
    guided = engine.generate(
        xl(init_image=REF, strength=0.6, controlnets=control()),
        init_image=source,
        control_images=[STRIPES],
    ).images[0]
    assert max_difference(plain, guided) > 2
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    painted = engine.generate(
        xl(init_image=REF, strength=0.9, inpaint=InpaintRef(mask=REF), controlnets=control()),
        init_image=source,
        mask_image=mask,
        control_images=[STRIPES],
    ).images[0]
    left = np.asarray(painted)[:, :24].astype(int) - np.asarray(source)[:, :24]
    assert np.abs(left).max() <= 3  # outside the mask: the source, kept
    assert max_difference(painted, source) > 20


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "changes", "inputs", "name"),
    [
        ("demo-xl", {"loras": (LoraRef(name="demo-lora"),)}, {}, "demo-lora"),
        ("demo-xl", {"prompt": "a fox demo-embedding"}, {}, "demo-embedding"),
        (
            "demo-xl",
            {"controlnets": control("demo-controlnet")},
            {"control_images": [STRIPES]},
            "demo-controlnet",
        ),
        (
            "demo-xl",
            {"ip_adapter": IpAdapterRef(name="demo-ip-adapter", image=REF)},
            {"ip_image": RED},
            "demo-ip-adapter",
        ),
        ("demo", {"loras": (LoraRef(name="demo-xl-lora"),)}, {}, "demo-xl-lora"),
        ("demo", {"prompt": "a fox demo-xl-embedding"}, {}, "demo-xl-embedding"),
        ("demo", {"controlnets": control()}, {"control_images": [STRIPES]}, "demo-xl-controlnet"),
        (
            "demo",
            {"ip_adapter": IpAdapterRef(name="demo-xl-ip-adapter", image=REF)},
            {"ip_image": RED},
            "demo-xl-ip-adapter",
        ),
    ],
)
def test_extras_of_the_other_family_are_refused_by_name(engine, xl, model, changes, inputs, name):
    before = engine.generate(xl(model=model)).images[0]
    with pytest.raises(HuabuError) as caught:
        engine.generate(xl(model=model, **changes), **inputs)
    assert repr(name) in caught.value.message
    reasons = ("does not fit", "another model family", "is not an SDXL embedding")
    assert any(reason in caught.value.message for reason in reasons), caught.value.message
    # ... and the model is unharmed: the next request is the base image, exactly.
    assert max_difference(before, engine.generate(xl(model=model)).images[0]) == 0


@pytest.mark.parametrize("sampler", samplers("Euler", "DPM fast", "DPM++ 2S a"))
def test_the_refiner_continues_the_same_sampling(engine, xl, sampler):
    """The refiner takes over at switch_at: the demo refiner changes the image, the more the
    earlier it takes over; a "refiner" with the base's own weights (demo-xl-single) gives the
    base's image, so the hand-over continues the same noise and schedule. Progress counts the
    request's steps once, and the infotext says A1111's Refiner and Refiner switch at."""
    from huabu.native.generation import Refiner

    base = engine.generate(xl(sampler=sampler, steps=10)).images[0]
    progress: list[tuple[int, int]] = []
    late = engine.generate(
        xl(sampler=sampler, steps=10, refiner=Refiner(model="demo-xl-refiner", switch_at=0.7)),
        on_progress=lambda s, t, _p: progress.append((s, t)),
    )
    early = engine.generate(
        xl(sampler=sampler, steps=10, refiner=Refiner(model="demo-xl-refiner", switch_at=0.3))
    ).images[0]
    itself = engine.generate(
        xl(sampler=sampler, steps=10, refiner=Refiner(model="demo-xl-single", switch_at=0.5))
    ).images[0]
    assert max_difference(base, late.images[0]) > 2
    assert max_difference(late.images[0], early) > 2
    assert max_difference(base, itself) <= 1
    assert progress[-1] == (10, 10) and all(b == 10 for _, b in progress)
    assert "Refiner: demo-xl-refiner, Refiner switch at: 0.7" in late.infotexts[0]
    assert max_difference(base, engine.generate(xl(sampler=sampler, steps=10)).images[0]) == 0


@pytest.mark.slow
def test_the_refiner_with_image_to_image(engine, xl):
    from huabu.native.generation import Refiner

    source = Image.new("RGB", (64, 64), (90, 160, 60))
    plain = engine.generate(xl(init_image=REF, strength=0.7), init_image=source).images[0]
    refined = engine.generate(
        xl(init_image=REF, strength=0.7, refiner=Refiner(model="demo-xl-refiner", switch_at=0.6)),
        init_image=source,
    ).images[0]
    assert max_difference(plain, refined) > 2


@pytest.mark.slow  # an engine of its own, or a pipeline run outside the engine
def test_a_single_file_refiner_loads_as_its_folder(settings, xl, tmp_path):
    """The refiner in the layout of its download (sd_xl_refiner_1.0.safetensors: the one
    OpenCLIP encoder as conditioner.embedders.0, an aesthetic score in the UNet's extra
    embedding): detected as a refiner, its configs derived from its shapes, and the same
    weights as its folder, so the same image."""
    from safetensors.torch import save_file

    from huabu.catalog.checkpoints import METADATA_KEY
    from huabu.demos.xl import REFINER_OVERRIDES, build_refiner, refiner_single_file_state
    from huabu.engine.engine import Engine
    from huabu.native.generation import Refiner
    from huabu.settings import Settings

    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("demo-xl", "demo-xl-refiner"):
        (checkpoints / name).symlink_to(settings.models_dir / "checkpoints" / name)
    save_file(
        refiner_single_file_state(build_refiner()),
        str(checkpoints / "single.safetensors"),
        metadata={METADATA_KEY: json.dumps(REFINER_OVERRIDES)},
    )
    home = Settings(home=tmp_path, threads=2)
    entry = ModelLibrary(home).find("checkpoints", "single")
    assert entry.architecture is Architecture.SDXL_REFINER and entry.layout == "single-file"
    engine = Engine(home)
    made = [
        engine.generate(xl(steps=6, refiner=Refiner(model=name, switch_at=0.5))).images[0]
        for name in ("demo-xl-refiner", "single")
    ]
    assert max_difference(*made) <= 1
    assert max_difference(made[0], engine.generate(xl(steps=6)).images[0]) > 2


@pytest.mark.slow  # a combination: make test-fast keeps the refiner's own case
@pytest.mark.parametrize("sampler", ["Euler", "DPM fast"])
def test_the_refiner_with_the_hires_fix_joins_the_pass_asked_for(engine, xl, sampler):
    """As A1111's ``hires_fix_refiner_pass``: the second pass by default, or the first, or
    both. A refiner with the base's own weights changes nothing in any pass, so the hand-over
    continues the same sampling there too; progress counts both passes once."""
    from huabu.native.generation import HiresFix, Refiner

    hires = HiresFix(scale=1.5, steps=6, strength=0.6)
    alone = engine.generate(xl(sampler=sampler, hires=hires)).images[0]
    made = {}
    for passes in ("first pass", "second pass", "both passes"):
        refiner = Refiner(model="demo-xl-refiner", switch_at=0.5, hires_pass=passes)
        result = engine.generate(xl(sampler=sampler, hires=hires, refiner=refiner))
        made[passes] = result.images[0]
        assert result.images[0].size == (96, 96)
        assert ("Hires refiner: " in result.infotexts[0]) == (passes != "second pass")
        assert max_difference(alone, made[passes]) > 2, passes
    assert max_difference(made["first pass"], made["second pass"]) > 2
    assert max_difference(made["both passes"], made["second pass"]) > 2
    progress: list[tuple[int, int]] = []
    itself = engine.generate(
        xl(
            sampler=sampler,
            hires=hires,
            refiner=Refiner(model="demo-xl-single", switch_at=0.5, hires_pass="both passes"),
        ),
        on_progress=lambda s, t, _p: progress.append((s, t)),
    ).images[0]
    assert max_difference(alone, itself) <= 1
    # The hires pass runs int(6 × 0.6) steps; a k-diffusion sampler one more, as A1111's.
    total = 6 + int(6 * 0.6) + (sampler == "DPM fast")
    assert progress[-1] == (total, total) and all(t == total for _, t in progress), progress


@pytest.mark.slow  # a combination: make test-fast keeps the refiner's, ControlNet's, inpainting's
@pytest.mark.parametrize("sampler", ["Euler", "DPM fast"])
def test_the_refiner_with_controlnet_units_and_inpainting(engine, xl, sampler):
    """ControlNet units guide the base's steps (they fit its UNet only) and the refiner
    finishes: each changes the image. Inpainting keeps its mask through the refiner's steps:
    outside it the source stays."""
    from huabu.native import InpaintRef
    from huabu.native.generation import Refiner

    refiner = Refiner(model="demo-xl-refiner", switch_at=0.5)
    source = Image.new("RGB", (64, 64), (90, 160, 60))
    cases = [({}, {})]
    if sampler == "Euler":  # image-to-image: where diffusers' ControlNet pipeline stops early
        cases.append(({"init_image": REF, "strength": 0.8}, {"init_image": source}))
    for extra, images in cases:
        controlled = engine.generate(
            xl(sampler=sampler, controlnets=control(), **extra), control_images=[STRIPES], **images
        ).images[0]
        refined = engine.generate(xl(sampler=sampler, refiner=refiner, **extra), **images).images[0]
        progress: list[tuple[int, int]] = []
        both = engine.generate(
            xl(sampler=sampler, controlnets=control(), refiner=refiner, **extra),
            control_images=[STRIPES],
            **images,
            on_progress=lambda s, t, _p, seen=progress: seen.append((s, t)),
        )
        assert max_difference(both.images[0], controlled) > 2, extra  # the refiner took over
        assert max_difference(both.images[0], refined) > 2, extra  # the units guided the base
        assert progress[-1][0] == progress[-1][1], progress
        assert "Refiner: demo-xl-refiner" in both.infotexts[0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))
    inpaint = xl(sampler=sampler, init_image=REF, strength=0.9, inpaint=InpaintRef(mask=REF))
    alone = engine.generate(inpaint, init_image=source, mask_image=mask).images[0]
    painted = engine.generate(
        inpaint.model_copy(update={"refiner": refiner}), init_image=source, mask_image=mask
    ).images[0]
    left = np.asarray(painted)[:, :24].astype(int) - np.asarray(source)[:, :24]
    assert np.abs(left).max() <= 3  # outside the mask: the source, kept
    assert max_difference(painted, alone) > 2  # inside: the refiner's work


@pytest.mark.slow
def test_stopping_early_is_diffusers_denoising_end(engine):
    """Where a pipeline has no ``denoising_end`` (SDXL ControlNet image-to-image), the base
    stops by interrupt at the same timestep: checked on one that has it."""
    from huabu.engine.engine import _stopping_at

    model = engine.cache._get("demo-xl")
    common = dict(
        prompt="a fox",
        image=Image.new("RGB", (64, 64), (90, 160, 60)),
        strength=0.8,
        num_inference_steps=10,
        output_type="latent",
    )

    def run(**kwargs):
        return model.img2img(generator=torch.Generator().manual_seed(3), **common, **kwargs).images

    ended = run(denoising_end=0.6)
    stopped = run(callback_on_step_end=_stopping_at(0.6, lambda pipe, i, t, values: values))
    assert torch.equal(ended, stopped)
    assert not torch.equal(ended, run())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"model": "demo", "refiner": {"model": "demo-xl-refiner"}}, "refiner"),
        ({"refiner": {"model": "demo-single"}}, "refiner.model"),
        ({"model": "demo-xl-refiner"}, "model"),
        ({"refiner": {"model": "demo-xl"}}, "refiner.model"),
        ({"refiner": {"model": "demo-xl-refiner", "switch_at": 1.0}}, "refiner.switch_at"),
        ({"refiner": {"model": "demo-xl-refiner", "hires_pass": "third"}}, "refiner.hires_pass"),
        ({"refiner": {"model": "nope"}}, "refiner.model"),
    ],
)
def test_refiners_that_cannot_refine_are_refused_by_field(engine, xl, changes, param):
    from huabu.errors import InvalidRequest
    from huabu.native import GenerationRequest

    with pytest.raises(InvalidRequest) as caught:
        engine.generate(GenerationRequest.parse(xl().model_dump() | changes))
    assert caught.value.param == param, caught.value.message
