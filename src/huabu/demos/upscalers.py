"""The demo upscaler: a tiny Real-ESRGAN (RRDBNet, 4×) with random, seeded weights, written
as Real-ESRGAN publishes ``RealESRGAN_x4plus.pth`` (its ``params_ema`` under that key, the
"new" key names: ``conv_first``, ``body.N.rdbM.convK``, ``conv_body``, ``conv_up1/2``,
``conv_hr``, ``conv_last``), so that spandrel reads it as it reads the real file. Its images
are a 4× enlargement with random colour shifts."""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_UPSCALER = "demo-upscaler"
_SEED = 4404
#: Real-ESRGAN x4plus has 64 features, 32 growth channels and 23 blocks (spandrel expects 32).
_FEATURES, _GROWTH, _BLOCKS = 8, 32, 1  # spandrel reads 32 growth channels


def state_dict(seed: int = _SEED) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def conv(name: str, out: int, into: int) -> dict[str, torch.Tensor]:
        weight = torch.randn(out, into, 3, 3, generator=generator) * (1 / (into * 9) ** 0.5)
        return {f"{name}.weight": weight, f"{name}.bias": torch.zeros(out)}

    tensors = conv("conv_first", _FEATURES, 3)
    for block in range(_BLOCKS):
        for rdb in (1, 2, 3):
            for index in range(1, 6):
                out = _FEATURES if index == 5 else _GROWTH
                tensors |= conv(
                    f"body.{block}.rdb{rdb}.conv{index}", out, _FEATURES + (index - 1) * _GROWTH
                )
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        tensors |= conv(name, _FEATURES, _FEATURES)
    return tensors | conv("conv_last", 3, _FEATURES)


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write ``upscalers/demo-upscaler.pth`` (if missing, or with ``force``)."""
    path = models / "upscalers" / f"{DEMO_UPSCALER}.pth"
    if path.exists() and not force:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state_dict()}, path)
    return [path]
