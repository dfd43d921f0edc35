"""A1111's variation seeds, tiling, and the hires fix's upscaling: what changes the starting
noise, the padding, or the size between two sampling passes.

Variation seeds: each image's starting noise is its seed's, slerped towards its subseed's
(``subseed + i``) by ``subseed_strength``, with A1111's ``slerp`` (including its linear branch
for nearly equal noises). Only the starting noise varies; the noise an ancestral sampler adds
later stays the seed's, as in A1111. The subseed's noise is drawn exactly as the seed's is, so
strength 1 starts from the subseed's noise bit for bit.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from huabu.native import GenerationRequest
from huabu.native.generation import LATENT_UPSCALERS


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of two noises of one image (``[C, H, W]``)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (
        torch.sin(val * omega) / so
    ).unsqueeze(1) * high


def vary(noise: torch.Tensor, subnoise: torch.Tensor, strength: float) -> torch.Tensor:
    """Each image's noise slerped towards its subseed's."""
    mixed = [slerp(strength, noise[i].float(), subnoise[i].float()) for i in range(len(noise))]
    return torch.stack(mixed).to(noise.dtype)


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


_PATCHING = threading.Lock()


@contextmanager
def varied_start(pipe: Any, request: GenerationRequest) -> Iterator[None]:
    """While ``pipe`` runs: its first draw of noise (the starting latents) is varied. A
    diffusers pipeline draws it with its module's ``randn_tensor``, replaced here for the
    call (one call at a time)."""
    if request.subseed_strength <= 0:
        yield
        return
    module: Any = next(
        sys.modules[cls.__module__]
        for cls in type(pipe).__mro__
        if hasattr(sys.modules.get(cls.__module__), "randn_tensor")
    )
    original = module.randn_tensor
    subseeds = request.image_subseeds()
    drawn = False

    def randn_tensor(shape, generator=None, device=None, dtype=None, layout=None):
        nonlocal drawn
        noise = original(shape, generator=generator, device=device, dtype=dtype, layout=layout)
        if drawn or shape[0] != len(subseeds):
            return noise
        drawn = True
        sub = original(
            shape, generator=generators(subseeds), device=device, dtype=dtype, layout=layout
        )
        return vary(noise, sub, request.subseed_strength)

    with _PATCHING:
        module.randn_tensor = randn_tensor
        try:
            yield
        finally:
            module.randn_tensor = original


@contextmanager
def tiled(enabled: bool, *modules: Any) -> Iterator[None]:
    """Circular padding in every convolution of ``modules`` (A1111's tiling), put back after."""
    if not enabled:
        yield
        return
    convs = [m for module in modules for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [conv.padding_mode for conv in convs]
    for conv in convs:
        conv.padding_mode = "circular"
    try:
        yield
    finally:
        for conv, mode in zip(convs, saved, strict=True):
            conv.padding_mode = mode


@contextmanager
def vae_tiles(vae: Any, size: int) -> Iterator[None]:
    """While it lasts, ``vae`` decodes and encodes images larger than ``size`` pixels on a side
    in overlapping tiles of ``size`` (diffusers' tiled VAE: a quarter overlap, blended), so its
    memory grows with the tile, not the image. 0: never."""
    if not size or not hasattr(vae, "use_tiling"):
        yield
        return
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, size, size // scale
    try:
        yield
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def upscale_latents(latents: torch.Tensor, upscaler: str, size: tuple[int, int]) -> torch.Tensor:
    """Latents interpolated to ``size`` (pixels), A1111's latent modes."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    scaled = torch.nn.functional.interpolate(
        latents.float(), size=(size[1] // 8, size[0] // 8), mode=mode, antialias=antialias
    )
    return scaled.to(latents.dtype)


def upscale_image(
    image: Image.Image, upscaler: str, size: tuple[int, int], models: Any = None
) -> Image.Image:
    """A decoded image at ``size``: Nearest, Lanczos (also A1111's "None"), or the library's
    upscaler of that name, run by ``models`` (``upscalers.Upscalers``)."""
    if upscaler not in ("None", "Lanczos", "Nearest") and models is not None:
        return models.upscale(upscaler, image, size, param="hires.upscaler")
    resample = Image.Resampling.NEAREST if upscaler == "Nearest" else Image.Resampling.LANCZOS
    return image.resize(size, resample)


def crop_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre of ``latents`` at ``size`` (pixels), cut as A1111 truncates them."""
    cut_x = latents.shape[3] - size[0] // 8
    cut_y = latents.shape[2] - size[1] // 8
    return latents[
        :,
        :,
        cut_y // 2 : latents.shape[2] - (cut_y + 1) // 2,
        cut_x // 2 : latents.shape[3] - (cut_x + 1) // 2,
    ]
