"""A1111's "SD upscale" script: the init image upscaled and redrawn tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers import REF, max_difference, pixels
from huabu.errors import InvalidRequest
from huabu.native.generation import SdUpscale


def _source() -> Image.Image:
    values = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return Image.fromarray(values)


@pytest.mark.parametrize(
    ("length", "tile", "overlap", "expected"),
    [
        (128, 64, 32, [0, 32, 64]),
        (128, 64, 0, [0, 64]),
        (100, 64, 16, [0, 36]),  # the last tile flush with the edge
        (64, 64, 32, [0]),
    ],
)
def test_tiles_are_placed_as_a1111_places_them(length, tile, overlap, expected):
    across, down = SdUpscale(overlap=overlap).tiles((length, length), (tile, tile))
    assert across == down == expected


def test_tile_seeds_advance_as_a1111s_batches_do():
    assert [SdUpscale(batch_size=1).tile_seed(10, t) for t in range(4)] == [10, 11, 12, 13]
    assert [SdUpscale(batch_size=2).tile_seed(10, t) for t in range(4)] == [10, 11, 11, 12]


def test_sd_upscale_redraws_the_upscaled_image(engine, small):
    options = {"upscaler": "Lanczos", "scale": 2, "overlap": 32}
    request = small(init_image=REF, strength=0.5, steps=6, sd_upscale=options, n_images=2)
    result = engine.generate(request, init_image=_source())
    assert [image.size for image in result.images] == [(128, 128)] * 2
    assert result.seeds == [1234, 1235]
    assert "SD upscale overlap: 32, SD upscale upscaler: Lanczos" in result.infotexts[0]
    assert "Size: 64x64" in result.infotexts[0]  # the tile's size, as A1111 writes it
    resized = _source().resize((128, 128), Image.Resampling.LANCZOS)
    redrawn = np.abs(pixels(result.images[0]).astype(int) - pixels(resized).astype(int)).mean()
    assert redrawn > 4  # each tile went through the model
    assert max_difference(result.images[0], result.images[1]) > 0  # its own seed
    again = engine.generate(request, init_image=_source())
    assert max_difference(again.images[0], result.images[0]) == 0
    # A model upscaler does the upscaling too.
    by_model = engine.generate(
        request.model_copy(update={"sd_upscale": SdUpscale(upscaler="demo-upscaler", overlap=32)}),
        init_image=_source(),
    )
    assert by_model.images[0].size == (128, 128)


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"sd_upscale": {"scale": 1, "upscaler": "Lanczos"}, "width": 128}, "sd_upscale.scale"),
        ({"sd_upscale": {"overlap": 64}}, "sd_upscale.overlap"),
        ({"sd_upscale": {"upscaler": "Latent"}}, "sd_upscale.upscaler"),
        ({"sd_upscale": {"upscaler": "nope"}}, "sd_upscale.upscaler"),
    ],
)
def test_what_cannot_tile_is_refused_by_name(engine, small, changes, param):
    request = small(**({"init_image": REF, "strength": 0.5} | changes))
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request, init_image=_source())
    assert refused.value.param == param
