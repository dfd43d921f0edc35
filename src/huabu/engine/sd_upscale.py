"""A1111's "SD upscale" script: the init image upscaled, cut into tiles of the request's size
that overlap, each tile redrawn as image-to-image, the tiles blended back along linear ramps
across their overlaps. Tiles are placed as A1111 places them (evenly spread, the last flush
with the edge) and seeded as it seeds them (``SdUpscale.tile_seed``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from huabu.engine.variation import upscale_image
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, GenerationResult, Timings


def _ramp(overlap: int, size: int, *, across: bool) -> Image.Image:
    """A mask rising from 0 to 255 over ``overlap`` pixels, ``size`` long the other way."""
    values = (np.arange(overlap, dtype=np.float32) * 255 / max(overlap, 1)).astype(np.uint8)
    grid = np.tile(values, (size, 1)) if across else np.tile(values[:, None], (1, size))
    return Image.fromarray(grid, "L")


def combine(
    tiles: list[list[Image.Image]],
    xs: list[int],
    ys: list[int],
    size: tuple[int, int],
    overlap: int,
) -> Image.Image:
    """The tiles (rows of them) blended into one image of ``size``."""
    width, height = size
    tile_w, tile_h = tiles[0][0].size
    combined = Image.new("RGB", size)
    for row_index, (y, row) in enumerate(zip(ys, tiles, strict=True)):
        line = Image.new("RGB", (width, tile_h))
        for col_index, (x, tile) in enumerate(zip(xs, row, strict=True)):
            if col_index == 0 or overlap == 0:
                line.paste(tile, (x, 0))
                continue
            line.paste(
                tile.crop((0, 0, overlap, tile_h)), (x, 0), _ramp(overlap, tile_h, across=True)
            )
            line.paste(tile.crop((overlap, 0, tile_w, tile_h)), (x + overlap, 0))
        if row_index == 0 or overlap == 0:
            combined.paste(line, (0, y))
            continue
        combined.paste(
            line.crop((0, 0, width, overlap)), (0, y), _ramp(overlap, width, across=False)
        )
        combined.paste(line.crop((0, overlap, width, tile_h)), (0, y + overlap))
    return combined


def run(
    engine: Any,
    request: GenerationRequest,
    init_image: Image.Image | None,
    on_progress: Callable | None,
    should_cancel: Callable | None,
) -> GenerationResult:
    """``request`` (with ``sd_upscale``) through ``engine``: each image's tiles as requests of
    their own. Progress counts every tile's steps."""
    started = time.perf_counter()
    options = request.sd_upscale
    assert options is not None
    if init_image is None:
        raise InvalidRequest("init_image could not be read", param="init_image")
    source = init_image.convert("RGB")
    if options.upscaler != "None":
        size = options.upscaled(source.width, source.height)
        source = upscale_image(source, options.upscaler, size, engine.upscalers)
    tile_w, tile_h = request.width, request.height
    xs, ys = options.tiles(source.size, (tile_w, tile_h))
    count = len(xs) * len(ys)
    images: list[Image.Image] = []
    timings: list[Timings] = []
    for image_index, seed in enumerate(request.image_seeds()):
        rows = []
        for row, y in enumerate(ys):
            line = []
            for col, x in enumerate(xs):
                number = image_index * count + row * len(xs) + col

                def report(step, total, preview=None, number=number):
                    if on_progress is not None:
                        grand = total * count * request.n_images
                        on_progress(number * total + step, grand, preview)

                tile_request = request.model_copy(
                    update={
                        "sd_upscale": None,
                        "n_images": 1,
                        "seed": options.tile_seed(seed, row * len(xs) + col),
                    }
                )
                result = engine.generate(
                    tile_request,
                    init_image=source.crop((x, y, x + tile_w, y + tile_h)),
                    on_progress=report,
                    should_cancel=should_cancel,
                )
                line.append(result.images[0])
                timings.append(result.timings)
            rows.append(line)
        images.append(combine(rows, xs, ys, source.size, options.overlap))
    summed = Timings(
        load=sum(t.load for t in timings),
        prompt=sum(t.prompt for t in timings),
        sample=sum(t.sample for t in timings),
        decode=sum(t.decode for t in timings),
        total=time.perf_counter() - started,
    )
    with engine.cache.lease(request.model) as model:
        return engine.result(request, model, images, summed)
