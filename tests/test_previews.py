"""Live previews (issue 18): A1111's "Approx cheap" of the newest latents, handed to the
progress callback at every step, per request in a batch too."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from huabu.engine.previews import approx_cheap, approx_flow


def collect(engine, request):
    """Each step's preview, decoded."""
    previews: list[Image.Image] = []

    def on_progress(step, total, preview):
        png = preview()
        if png is not None:
            previews.append(Image.open(io.BytesIO(png)))

    engine.generate(request, on_progress=on_progress)
    return previews


def test_approx_cheap_uses_a1111s_weights():
    # One latent channel at 1 gives that channel's RGB weights, mapped from -1…1 to 0…255.
    latent = torch.zeros(4, 2, 2)
    latent[0] = 1.0
    assert approx_cheap(latent, sdxl=False).getpixel((0, 0)) == (165, 154, 154)
    assert approx_cheap(latent, sdxl=True).getpixel((1, 1)) == (171, 181, 184)
    latent[:] = 0
    assert approx_cheap(latent, sdxl=False).getpixel((0, 0)) == (128, 128, 128)


def test_approx_flow_uses_each_vaes_map_and_its_offset():
    latent = torch.zeros(16, 2, 2)
    assert approx_flow(latent).getpixel((0, 0)) == (123, 118, 117)  # FLUX's offset alone
    assert approx_flow(latent, "sd3").getpixel((0, 0)) == (158, 155, 152)  # SD 3's
    assert approx_flow(latent, "wan").getpixel((0, 0)) == (104, 116, 85)  # Qwen-Image's VAE
    latent[13] = 1.0  # the channel with FLUX's strongest (negative) weights
    assert approx_flow(latent).getpixel((1, 0)) == (107, 112, 103)
    # A latent of another width (a tiny demo's): its channels' mean, as grey.
    assert approx_flow(torch.full((1, 2, 2), 0.5)).getpixel((0, 1)) == (191, 191, 191)


@pytest.mark.parametrize("sampler", ["Euler", "DPM adaptive"])
def test_each_step_previews_the_image_as_it_denoises(engine, small, sampler):
    previews = collect(engine, small(sampler=sampler, width=128, height=64))
    assert len(previews) >= 4
    assert all(p.size == (16, 8) and p.mode == "RGB" for p in previews)
    first, last = (np.asarray(p, dtype=np.int16) for p in (previews[0], previews[-1]))
    assert np.abs(first - last).max() > 10  # it changes as the noise goes
    other = collect(engine, small(sampler=sampler, width=128, height=64, seed=99))
    assert not np.array_equal(np.asarray(other[-1]), np.asarray(previews[-1]))  # its own image


def test_a_batch_previews_each_requests_own_first_image(engine, small):
    requests = [small(seed=1, n_images=2), small(seed=50)]
    seen: list[list[bytes]] = [[], []]

    def recorder(i):
        return lambda step, total, preview: seen[i].append(preview())

    engine.generate_batch(requests, [recorder(0), recorder(1)], [lambda: False] * 2)
    alone = collect(engine, small(seed=50))
    mine = Image.open(io.BytesIO(seen[1][-1]))
    assert not np.array_equal(np.asarray(mine), np.asarray(Image.open(io.BytesIO(seen[0][-1]))))
    # Request 2's preview is its own image (the batch's third), as it would be alone.
    difference = np.abs(np.asarray(mine, np.int16) - np.asarray(alone[-1], np.int16)).max()
    assert difference <= 2
