"""ControlNet units on the demo model: applied per request, scaled, timed, stacked, and gone
for the next request."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers import REF, max_difference
from huabu.engine import annotators
from huabu.errors import InvalidRequest, ModelUnavailable
from huabu.native import ControlUnit, InpaintRef, LoraRef


@pytest.fixture(scope="module")
def square():
    image = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill=(255, 255, 255))
    return image


def unit(**changes) -> ControlUnit:
    return ControlUnit(
        **({"model": "demo-controlnet", "image": REF, "preprocessor": "canny"} | changes)
    )


def run(engine, small, square, *units, **changes):
    request = small(controlnets=units, **changes)
    return engine.generate(request, control_images=[square] * len(units)).images[0]


@pytest.mark.slow
def test_controlnet_scale_and_no_leak(engine, small, square):
    base = engine.generate(small()).images[0]
    full = run(engine, small, square, unit())
    off = run(engine, small, square, unit(scale=0.0))
    after = engine.generate(small()).images[0]
    assert max_difference(base, full) > 8
    assert max_difference(base, off) == 0  # scale 0 is no ControlNet, bit for bit
    assert max_difference(base, after) == 0
    # The control image steers it: another shape, another image.
    bar = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(bar).rectangle((0, 28, 64, 36), fill=(255, 255, 255))
    as_map = unit(preprocessor="none")
    assert max_difference(run(engine, small, square, as_map), run(engine, small, bar, as_map)) > 2


@pytest.mark.slow
def test_guidance_window_and_stacking(engine, small, square):
    full = run(engine, small, square, unit())
    late = run(engine, small, square, unit(start=0.5))
    early = run(engine, small, square, unit(end=0.5))
    stacked = run(engine, small, square, unit(), unit(preprocessor="lineart_standard", scale=0.5))
    assert max_difference(full, late) > 0 and max_difference(full, early) > 0
    assert max_difference(full, stacked) > 0


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["DPM fast", "DPM adaptive", "DPM++ 2S a"])
def test_controlnet_with_the_k_diffusion_samplers(engine, small, square, sampler):
    base = engine.generate(small(sampler=sampler)).images[0]
    full = run(engine, small, square, unit(), sampler=sampler)
    off = run(engine, small, square, unit(scale=0.0), sampler=sampler)
    late = run(engine, small, square, unit(start=0.5), sampler=sampler)
    assert max_difference(base, full) > 8
    assert max_difference(base, off) == 0  # scale 0 is no ControlNet, bit for bit
    assert max_difference(full, late) > 0 and max_difference(base, late) > 0
    assert max_difference(engine.generate(small(sampler=sampler)).images[0], base) == 0


def test_controlnet_with_img2img(engine, small, square):
    plain = engine.generate(small(init_image=REF, strength=0.6), init_image=square).images[0]
    controlled = engine.generate(
        small(init_image=REF, strength=0.6, controlnets=(unit(),)),
        init_image=square,
        control_images=[square],
    ).images[0]
    assert max_difference(plain, controlled) > 0


def test_controlnet_with_inpainting(engine, small, square):
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    request = small(init_image=REF, strength=0.9, inpaint=InpaintRef(mask=REF, blur=0))
    plain = engine.generate(request, init_image=square, mask_image=mask).images[0]
    controlled = engine.generate(
        request.model_copy(update={"controlnets": (unit(),)}),
        init_image=square,
        control_images=[square],
        mask_image=mask,
    ).images[0]
    kept = np.asarray(controlled)[:, 32:]
    assert np.array_equal(kept, np.asarray(square)[:, 32:])
    assert max_difference(plain.crop((0, 0, 32, 64)), controlled.crop((0, 0, 32, 64))) > 0


def test_preprocessors_make_control_maps(square):
    edges = np.asarray(annotators.run("canny", square))
    assert set(np.unique(edges).tolist()) == {0, 255}
    assert edges[14:19, 30].max() == 255 and edges[32, 32].max() == 0  # its edge, not inside
    assert np.asarray(annotators.run("lineart_standard", square)).shape == (64, 64, 3)
    assert annotators.run("none", square) is not square  # a copy, as RGB
    first = annotators.run("shuffle", square, seed=1)
    assert np.array_equal(np.asarray(first), np.asarray(annotators.run("shuffle", square, seed=1)))


def test_the_catalog_names_what_the_annotator_families_run():
    """The API process checks requests against the catalog's torch-free table: it must say
    exactly what the engine's families need, or a request would be accepted that a worker
    cannot run (or refused that it can)."""
    from huabu.catalog import preprocessors as catalog

    networks = {
        name: files
        for family in annotators.FAMILIES
        if family.package is None
        for name, files in family.needs.items()
    }
    packages = {
        name: family.package
        for family in annotators.FAMILIES
        if family.package
        for name in family.needs
    }
    assert networks == catalog.NETWORKS
    assert packages == catalog.PACKAGES
    assert not set(catalog.WEIGHTLESS) & set(annotators.FAMILY_OF)
    for name in catalog.WEIGHTLESS:  # each weightless name runs without any file
        assert annotators.run(name, Image.new("RGB", (64, 64), "grey")).size == (64, 64)
    # Every file a family builds a network for is one a name of it needs.
    for family in annotators.FAMILIES:
        assert set(family.networks) <= {f for files in family.needs.values() for f in files}


@pytest.mark.parametrize(
    ("changes", "param", "text"),
    [
        (
            {"controlnets": (unit(preprocessor="depth_zoe"),)},
            "controlnets.0.preprocessor",
            "models/annotators/ZoeD_M12_N.pt",
        ),
        (
            {"controlnets": (unit(preprocessor="dwpose"),)},
            "controlnets.0.preprocessor",
            "models/annotators/yolox_l.onnx and models/annotators/dw-ll_ucoco_384.onnx",
        ),
        (
            {"controlnets": (unit(preprocessor="openpose_full"),)},
            "controlnets.0.preprocessor",
            "models/annotators/body_pose_model.pth and models/annotators/hand_pose_model.pth "
            "and models/annotators/facenet.pth",
        ),
        (
            {"controlnets": (unit(preprocessor="softedge_hed"),)},
            "controlnets.0.preprocessor",
            "models/annotators/ControlNetHED.pth",
        ),
        (
            {"controlnets": (unit(preprocessor="sketchy"),)},
            "controlnets.0.preprocessor",
            "unknown preprocessor",
        ),
        ({"controlnets": (unit(start=0.6, end=0.4),)}, "controlnets.0.start", "below end"),
        ({"controlnets": (unit(model="nope"),)}, "controlnets.0.model", "demo-controlnet"),
    ],
)
def test_bad_units_are_named(engine, small, square, changes, param, text):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(small(**changes), control_images=[square])
    assert caught.value.param == param and text in caught.value.message


@pytest.mark.slow
def test_a_single_file_controlnet_in_a1111_layout_is_the_same_controlnet(engine, small, square):
    """demo-controlnet-single is demo-controlnet written as A1111's downloads are
    (control_model.*): loaded onto the checkpoint's structure, it makes the same images;
    a LoRA used on the checkpoint before does not get in its way."""
    engine.generate(small(loras=(LoraRef(name="demo-lora"),)))
    folder = run(engine, small, square, unit())
    single = run(engine, small, square, unit(model="demo-controlnet-single"))
    assert max_difference(folder, single) == 0
    single_k = run(engine, small, square, unit(model="demo-controlnet-single"), sampler="DPM fast")
    assert max_difference(single_k, run(engine, small, square, unit(), sampler="DPM fast")) == 0


def test_a_file_that_is_not_a_controlnet_is_refused_by_name(engine, small, square, settings):
    from safetensors.torch import save_file

    path = settings.models_dir / "controlnet" / "not-a-controlnet.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    try:
        with pytest.raises(ModelUnavailable) as caught:
            run(engine, small, square, unit(model="not-a-controlnet"))
    finally:
        path.unlink()
    assert "not-a-controlnet" in caught.value.message and "A1111's layout" in caught.value.message
