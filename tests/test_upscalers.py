"""Model upscalers (spandrel's architectures, without torchvision): files in their published
layouts are recognised, run in tiles as they run whole, and serve the hires fix."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import max_difference
from huabu.demos.upscalers import DEMO_UPSCALER
from huabu.engine import upscalers
from huabu.errors import InvalidRequest


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    values = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(values)


def test_spandrel_loads_without_torchvision():
    """Importing huabu's spandrel registry imports neither torchvision nor LaMa's module."""
    code = (
        "import sys; from huabu.engine import upscalers; upscalers._registry();"
        "print('torchvision' in sys.modules, any('LaMa' in m for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _tiny(arch: str):
    """A tiny network of spandrel's ``arch`` (the published layout's key names)."""
    upscalers._registry()
    if arch == "Compact":  # Real-ESRGAN's realesr-general-x4v3 / animevideo
        from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

        return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4), 4
    if arch == "SwinIR":
        from spandrel.architectures.SwinIR.__arch.SwinIR import SwinIR

        net = SwinIR(
            upscale=2, embed_dim=12, depths=[1], num_heads=[2], window_size=4,
            mlp_ratio=2, upsampler="pixelshuffle", img_size=16,
        )  # fmt: skip
        return net, 2
    raise AssertionError(arch)


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
@pytest.mark.parametrize("arch", ["Compact", "SwinIR"])
def test_other_layouts_are_recognised(tmp_path, arch):
    torch.manual_seed(0)
    net, scale = _tiny(arch)
    path = tmp_path / f"{arch}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    descriptor = upscalers.load(path, torch.device("cpu"))
    assert descriptor.architecture.id == arch and descriptor.scale == scale
    out = upscalers.run_tiled(descriptor, _noise(24, 20))
    assert out.size == (24 * scale, 20 * scale)


def test_the_demo_is_read_as_real_esrgan_and_tiles_match_the_whole(settings):
    path = settings.models_dir / "upscalers" / f"{DEMO_UPSCALER}.pth"
    descriptor = upscalers.load(path, torch.device("cpu"))
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4
    image = _noise(70, 52)
    whole = upscalers.run_tiled(descriptor, image, tile=256)
    tiled = upscalers.run_tiled(descriptor, image, tile=24)
    assert whole.size == tiled.size == (280, 208)
    assert max_difference(whole, tiled) <= 2  # Real-ESRGAN's tile padding: seams vanish


def test_not_an_upscaler_is_refused_by_name(tmp_path):
    path = tmp_path / "nope.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(InvalidRequest) as refused:
        upscalers.load(path, torch.device("cpu"))
    assert refused.value.param == "upscaler" and "ESRGAN" in str(refused.value)


def test_the_hires_fix_runs_a_model_upscaler(engine, small, settings):
    hires = {"scale": 2, "upscaler": DEMO_UPSCALER, "strength": 0.5}
    by_model = engine.generate(small(width=64, height=64, steps=6, hires=hires))
    by_lanczos = engine.generate(
        small(width=64, height=64, steps=6, hires=hires | {"upscaler": "Lanczos"})
    )
    assert by_model.images[0].size == (128, 128)
    assert max_difference(by_model.images[0], by_lanczos.images[0]) > 0
    assert f"Hires upscaler: {DEMO_UPSCALER}" in by_model.infotexts[0]
    # A1111's own name for Real-ESRGAN x4+ reads RealESRGAN_x4plus from the library.
    alias = settings.models_dir / "upscalers" / "RealESRGAN_x4plus.pth"
    with pytest.raises(InvalidRequest) as missing:
        engine.generate(small(hires=hires | {"upscaler": "R-ESRGAN 4x+"}))
    assert missing.value.param == "hires.upscaler"
    assert "RealESRGAN_x4plus.pth" in str(missing.value)
    shutil.copy(settings.models_dir / "upscalers" / f"{DEMO_UPSCALER}.pth", alias)
    try:
        named = engine.generate(
            small(width=64, height=64, steps=6, hires=hires | {"upscaler": "R-ESRGAN 4x+"})
        )
        assert max_difference(named.images[0], by_model.images[0]) == 0
    finally:
        alias.unlink()
