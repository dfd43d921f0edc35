"""A1111's generation options on the engine: variation seeds, tiling and the hires fix, checked
for what a user sees (pixels, sizes, infotext), on the demo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import max_difference, pixels
from huabu.catalog.infotext import parse_infotext
from huabu.engine.variation import tiled
from huabu.errors import InvalidRequest


@pytest.mark.parametrize("sampler", ["Euler", pytest.param("DPM++ 2M", marks=pytest.mark.slow)])
def test_variation_strength_zero_is_the_seed_and_one_is_the_subseed(engine, small, sampler):
    def image(**changes):
        return engine.generate(small(sampler=sampler, **changes)).images[0]

    base, other = image(seed=11), image(seed=99)
    assert max_difference(image(seed=11, subseed=99, subseed_strength=0.0), base) == 0
    assert max_difference(image(seed=11, subseed=99, subseed_strength=1.0), other) == 0
    halfway = image(seed=11, subseed=99, subseed_strength=0.5)
    assert max_difference(halfway, base) > 0 and max_difference(halfway, other) > 0


@pytest.mark.slow
def test_variation_seeds_vary_the_k_diffusion_samplers_start(engine, small):
    """DPM fast draws noise as it goes; as in A1111 only its start varies, so strength 1 is
    not the subseed's image, but strength 0 is the seed's exactly."""

    def image(**changes):
        return engine.generate(small(sampler="DPM fast", seed=11, **changes)).images[0]

    base = image()
    assert max_difference(image(subseed=99, subseed_strength=0.0), base) == 0
    assert max_difference(image(subseed=99, subseed_strength=0.5), base) > 0
    assert (
        max_difference(
            image(subseed=99, subseed_strength=0.5), image(subseed=98, subseed_strength=0.5)
        )
        > 0
    )


@pytest.mark.slow
def test_variation_seeds_count_up_per_image_and_are_in_the_infotext(engine, small):
    result = engine.generate(small(seed=5, subseed=40, subseed_strength=0.3, n_images=2))
    fields = [parse_infotext(text) for text in result.infotexts]
    assert [f["Variation seed"] for f in fields] == ["40", "41"]
    assert {f["Variation seed strength"] for f in fields} == {"0.3"}
    # Image 1 of the batch is image 0 of a request that starts one seed (and subseed) later.
    alone = engine.generate(small(seed=6, subseed=41, subseed_strength=0.3)).images[0]
    assert max_difference(result.images[1], alone) <= 1


@pytest.mark.slow
def test_a_tiled_image_wraps_around(engine, small):
    """Tiling pads every convolution of the UNet and the VAE circularly, so the model sees the
    image as wrapping around: a start shifted by half the image (in either direction) gives
    the result shifted by half the image. Without tiling the edges break that."""
    request = small(width=128, height=128, seed=3)
    plain = engine.generate(request)
    tiled_result = engine.generate(request.model_copy(update={"tiling": True}))
    assert parse_infotext(tiled_result.infotexts[0])["Tiling"] == "True"
    assert max_difference(tiled_result.images[0], plain.images[0]) > 0
    start = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    with engine.cache.lease("demo") as model, torch.inference_mode():
        unet, vae = model.components["unet"], model.components["vae"]
        embeds = torch.zeros((1, 77, unet.config.cross_attention_dim))

        def model_step(latents):  # one denoising step, then decoding
            noise = unet(latents, 500, encoder_hidden_states=embeds).sample
            return vae.decode(latents - 0.1 * noise).sample

        for dims in (3, 2):  # left/right, then top/bottom
            with tiled(True, unet, vae):
                shifted = model_step(start.roll(8, dims=dims))
                expected = model_step(start).roll(64, dims=dims)
            assert (shifted - expected).abs().max() < 1e-3
            untiled = model_step(start.roll(8, dims=dims)) - model_step(start).roll(64, dims=dims)
            assert untiled.abs().max() > 0.05
    # The model is left as it was: the next request is the plain image again.
    assert max_difference(engine.generate(request).images[0], plain.images[0]) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hires", "size", "sampler"),
    [
        ({"scale": 2, "upscaler": "Latent"}, (128, 128), "Euler a"),
        ({"resize_width": 120, "upscaler": "Lanczos", "steps": 4}, (120, 120), "Euler"),
        (
            {"resize_width": 128, "resize_height": 96, "upscaler": "Latent (nearest)"},
            (128, 96),
            "DPM++ 2S a",
        ),
    ],
)
def test_the_hires_fix_makes_the_upscaled_size_and_says_so(engine, small, hires, size, sampler):
    progress = []
    request = small(width=64, height=64, steps=6, sampler=sampler, hires=hires)
    result = engine.generate(
        request, on_progress=lambda step, total, _p: progress.append((step, total))
    )
    assert result.images[0].size == size
    fields = parse_infotext(result.infotexts[0])
    assert fields["Size"] == "64x64"  # A1111 writes the first pass's size
    assert fields["Hires upscaler"] == hires["upscaler"]
    assert fields["Denoising strength"] == "0.75"
    if "scale" in hires:
        assert fields["Hires upscale"] == "2"
    else:
        assert fields["Hires resize"] == f"{hires['resize_width']}x{hires.get('resize_height', 0)}"
    assert progress[-1][0] == progress[-1][1]  # both passes counted, to the end
    assert progress[-1][1] > 6


@pytest.mark.slow
def test_the_hires_pass_changes_the_plain_upscale(engine, small):
    """Refined, not only resized: the second pass redraws the upscaled first pass."""
    from PIL import Image

    base = engine.generate(small(width=64, height=64, steps=6)).images[0]
    hires = {"resize_width": 128, "upscaler": "Lanczos", "strength": 0.6}
    refined = engine.generate(small(width=64, height=64, steps=6, hires=hires)).images[0]
    resized = base.resize((128, 128), Image.Resampling.LANCZOS)
    assert max_difference(refined, resized) > 16


def test_hires_strength_0_is_the_upscaled_first_pass(engine, small):
    """A1111's API tests send the hires fix at denoising_strength 0: the first pass upscaled,
    not refined. The latents are upscaled and decoded; a refining pass would redraw them."""
    hires = {"resize_width": 128, "upscaler": "Latent", "strength": 0}
    upscaled = engine.generate(small(width=64, height=64, steps=6, hires=hires))
    refined = engine.generate(
        small(width=64, height=64, steps=6, hires=hires | {"strength": 0.6})
    ).images[0]
    plain = engine.generate(small(width=64, height=64, steps=6)).images[0]
    assert upscaled.images[0].size == refined.size == (128, 128)
    assert "Denoising strength: 0" in upscaled.infotexts[0]

    def distance(image):
        return np.abs(
            pixels(image).astype(int) - pixels(plain.resize((128, 128))).astype(int)
        ).mean()

    assert distance(upscaled.images[0]) < distance(refined)


@pytest.mark.parametrize(
    ("hires", "param", "message"),
    [
        ({"scale": 4}, "hires.scale", "the hires fix would make 2560x2560"),
        ({"upscaler": "R-ESRGAN 4x+"}, "hires.upscaler", "it reads RealESRGAN_x4plus.pth"),
        ({"upscaler": "Bilinear"}, "hires.upscaler", "no upscaler 'Bilinear' on this server"),
        ({"upscaler": "LDSR"}, "hires.upscaler", "LDSR is not supported"),
    ],
)
def test_hires_requests_beyond_what_runs_are_refused_naming_the_field(
    engine, small, hires, param, message
):
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(small(width=640, height=640, hires=hires))
    assert refused.value.param == param and message in refused.value.message
