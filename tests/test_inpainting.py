"""Inpainting on the engine: what the mask keeps stays the source's own pixels, what it marks is
repainted, and each option (strength, fill, only masked, invert) changes what it should."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from helpers import REF, loaded, pixels
from huabu.engine.denoiser import Denoiser
from huabu.engine.inpainting import plan
from huabu.errors import InvalidRequest
from huabu.native import InpaintRef

#: One sampler through diffusers' inpainting pipeline, one through the k-diffusion path.
SAMPLERS = ["Euler a", "DPM++ 2S a Karras"]


def noise_image(seed: int = 0, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def mask_of(box: tuple[int, int, int, int], size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


LEFT_HALF = (0, 0, 31, 63)


def inpaint(
    engine, small, source, mask, *, strength=1.0, sampler="Euler a", model="demo", **options
):
    request = small(
        model=model,
        sampler=sampler,
        init_image=REF,
        strength=strength,
        inpaint=InpaintRef(mask=REF, **({"blur": 0} | options)),
    )
    return engine.generate(request, init_image=source, mask_image=mask)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_only_the_masked_area_is_repainted(engine, small, sampler):
    source = noise_image()
    result = inpaint(engine, small, source, mask_of(LEFT_HALF), sampler=sampler)
    out, before = pixels(result.images[0]), pixels(source)
    assert np.array_equal(out[:, 32:], before[:, 32:])
    assert np.abs(out[:, :32] - before[:, :32]).mean() > 20
    assert "Mask blur: 0" in result.infotexts[0] and "Denoising strength: 1" in result.infotexts[0]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_strength_sets_how_much_of_the_masked_area_survives(engine, small, sampler):
    # Two sources that differ only in the masked half: at low strength the results differ much
    # more than at full strength, where the masked half is painted anew.
    green, noisy = noise_image(), noise_image()
    ImageDraw.Draw(green).rectangle(LEFT_HALF, fill=(20, 200, 40))
    mask = mask_of(LEFT_HALF)

    def gap(strength):
        a, b = (
            pixels(inpaint(engine, small, s, mask, strength=strength, sampler=sampler).images[0])
            for s in (green, noisy)
        )
        return np.abs(a[:, :32] - b[:, :32]).mean()

    assert gap(0.3) > 2 * gap(1.0)


def test_k_diffusion_keeps_the_unmasked_latents_at_every_step(engine):
    unet = loaded(engine, "demo").components["unet"]
    torch.manual_seed(0)
    embeds = torch.randn(1, 77, unet.config.cross_attention_dim)
    kept = torch.randn(1, 4, 8, 8)
    repaint = torch.zeros(1, 1, 8, 8)
    repaint[..., :4] = 1
    denoiser = Denoiser(
        unet,
        loaded(engine, "demo").txt2img.scheduler.alphas_cumprod,
        prediction_type="epsilon",
        embeds=embeds,
        negative_embeds=torch.zeros_like(embeds),
        guidance=7.0,
        keep=(kept, repaint),
    )
    denoised = denoiser(torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0]))
    assert torch.equal(denoised[..., 4:], kept.expand(2, -1, -1, -1)[..., 4:])
    assert (denoised[..., :4] - kept[..., :4]).abs().mean() > 0.1


def test_invert_repaints_the_black_part(engine, small):
    source = noise_image()
    out = pixels(inpaint(engine, small, source, mask_of(LEFT_HALF), invert=True).images[0])
    assert np.array_equal(out[:, :32], pixels(source)[:, :32])
    assert np.abs(out[:, 32:] - pixels(source)[:, 32:]).mean() > 20


def test_fill_starts_the_masked_area_from_its_surroundings(engine, small):
    # A red half to repaint beside a blue half: "fill" starts sampling from blue, "original"
    # from red (the tiny demo model's VAE keeps no colours, so the start is checked directly).
    source = Image.new("RGB", (64, 64), (0, 0, 230))
    ImageDraw.Draw(source).rectangle(LEFT_HALF, fill=(230, 0, 0))
    start = {
        fill: np.asarray(
            plan(source, mask_of(LEFT_HALF), InpaintRef(mask=REF, fill=fill, blur=0)).start
        )
        for fill in ("original", "fill")
    }
    assert tuple(start["original"][32, 8]) == (230, 0, 0)
    red, _, blue = start["fill"][32, 8]
    assert blue > 200 and red < 20
    # And it changes what is generated from a detailed source.
    source = noise_image()
    original, filled = (
        pixels(inpaint(engine, small, source, mask_of(LEFT_HALF), strength=0.3, fill=f).images[0])
        for f in ("original", "fill")
    )
    assert np.abs(original[:, :32] - filled[:, :32]).mean() > 4
    assert np.array_equal(original[:, 32:], filled[:, 32:])


def test_only_masked_repaints_a_small_area_at_the_full_size(engine, small):
    source, mask = noise_image(), mask_of((24, 24, 39, 39))
    whole = pixels(inpaint(engine, small, source, mask).images[0])
    cut = inpaint(engine, small, source, mask, only_masked=True, padding=8)
    out = pixels(cut.images[0])
    outside = np.ones((64, 64), dtype=bool)
    outside[24:40, 24:40] = False
    assert np.array_equal(out[outside], pixels(source)[outside])
    assert np.abs(out[24:40, 24:40] - pixels(source)[24:40, 24:40]).mean() > 20
    assert np.abs(out[24:40, 24:40] - whole[24:40, 24:40]).mean() > 10
    assert "Inpaint area: Only masked, Masked area padding: 8" in cut.infotexts[0]


def test_only_masked_cuts_out_the_mask_with_padding_at_the_output_aspect_ratio():
    source = noise_image(size=96).crop((0, 0, 96, 64))
    the_plan = plan(
        source,
        mask_of((40, 20, 49, 29), size=96).crop((0, 0, 96, 64)),
        InpaintRef(mask=REF, blur=0, only_masked=True, padding=6),
    )
    x1, y1, x2, y2 = the_plan.box
    assert x1 <= 34 and y1 <= 14 and x2 >= 56 and y2 >= 36
    assert abs((x2 - x1) / (y2 - y1) - 96 / 64) < 0.05
    assert the_plan.start.size == (96, 64)


@pytest.mark.parametrize(
    ("mask", "invert"),
    [(Image.new("L", (64, 64), 0), False), (Image.new("L", (64, 64), 255), True)],
)
def test_a_mask_that_repaints_nothing_is_refused(engine, small, mask, invert):
    with pytest.raises(InvalidRequest) as error:
        inpaint(engine, small, noise_image(), mask, invert=invert)
    assert error.value.param == "inpaint.mask" and "nothing to repaint" in str(error.value)


def test_inpainting_needs_a_source_image(engine, small):
    with pytest.raises(InvalidRequest) as error:
        engine.generate(small(inpaint=InpaintRef(mask=REF)), mask_image=mask_of(LEFT_HALF))
    assert error.value.param == "inpaint"


@pytest.fixture(scope="module")
def inpainting_engine(engine, tmp_path_factory):
    """An engine whose library holds a dedicated inpainting checkpoint (a 9-channel UNet, the
    demo model's otherwise): the UNet also sees the mask and the masked image."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from huabu import demos
    from huabu.engine.engine import Engine
    from huabu.settings import Settings

    home = tmp_path_factory.mktemp("inpainting-home")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(demos.sd._UNET | {"in_channels": 9}))
    parts = loaded(engine, "demo").components
    StableDiffusionPipeline(**(parts | {"unet": unet})).save_pretrained(
        home / "models" / "checkpoints" / "demo-inpainting"
    )
    return Engine(Settings(home=home, threads=2))


def test_a_dedicated_inpainting_checkpoint_inpaints(inpainting_engine, small):
    source = noise_image()
    result = inpaint(inpainting_engine, small, source, mask_of(LEFT_HALF), model="demo-inpainting")
    out = pixels(result.images[0])
    assert np.array_equal(out[:, 32:], pixels(source)[:, 32:])
    assert np.abs(out[:, :32] - pixels(source)[:, :32]).mean() > 20
    for request in (
        small(model="demo-inpainting"),  # no mask
        small(
            model="demo-inpainting",
            sampler="DPM fast",
            init_image=REF,
            inpaint=InpaintRef(mask=REF),
        ),
    ):
        with pytest.raises(InvalidRequest) as error:
            inpainting_engine.generate(request, init_image=source, mask_image=mask_of(LEFT_HALF))
        assert error.value.param == "model" and "inpainting checkpoint" in str(error.value)
