"""The offline demo models: tiny checkpoints of the real architectures with random, seeded
weights, built by huabu itself, so everything runs offline and fast on a CPU (their images are
coloured noise). ``sd``: SD 1.x in both layouts, the SD 2.x sibling and their extras; ``xl``:
SDXL in both layouts, its refiner and extras; ``flux``: FLUX.1, FLUX.1 Kontext and their LoRA;
``flux_files``: FLUX.1 as split single files;
``flux2``: FLUX.2 [klein] and [dev]; ``sd3``: SD 3.x; ``sd3_files``: SD 3.x as SAI's
all-in-one file; ``zimage``: Z-Image; ``qwen``: Qwen-Image and Qwen-Image-Edit;
``upscalers``: a Real-ESRGAN upscaler; ``ldm_layout``: the single-file (LDM/SGM) layouts
they are also written in. ``huabu models demo`` and ``make run`` call ``build``."""

from __future__ import annotations

from pathlib import Path

# (The engine package first: it quiets the libraries the demos import.)
from huabu import engine  # noqa: F401, I001
from huabu.demos import flux, flux2, flux_files, qwen, sd, sd3, sd3_files, upscalers, xl, zimage
from huabu.demos.sd import DEMO, DEMO_SINGLE, NOTICE
from huabu.settings import Settings

__all__ = [
    "DEMO",
    "DEMO_SINGLE",
    "NOTICE",
    "build",
    "flux",
    "flux2",
    "flux_files",
    "qwen",
    "sd",
    "sd3",
    "sd3_files",
    "upscalers",
    "xl",
    "zimage",
]


def build(settings: Settings, *, force: bool = False) -> list[Path]:
    """Write every demo model and extra into the model library, each if it is missing (or all
    with ``force``); returns the paths written."""
    models = settings.models_dir
    return (
        sd.build(models, force=force)
        + xl.build(models, force=force)
        + flux.build(models, force=force)
        + flux_files.build(models, force=force)
        + flux2.build(models, force=force)
        + sd3.build(models, force=force)
        + sd3_files.build(models, force=force)
        + zimage.build(models, force=force)
        + qwen.build(models, force=force)
        + upscalers.build(models, force=force)
    )
