"""Model upscalers from ``models/upscalers/`` (ESRGAN, Real-ESRGAN and its compact and anime
nets, SwinIR, Swin2SR, DAT, HAT, SPAN, OmniSR …), loaded by spandrel, run in tiles.

spandrel (MIT) reads an upscaler's architecture and sizes from its weights. Its package
``__init__`` builds a registry that imports every architecture it knows, LaMa among them,
whose module imports torchvision at import time; huabu never installs torchvision. So huabu
imports spandrel's helpers and the architectures it offers directly (``_registry``), never
spandrel's ``__init__``: nothing imported here imports torchvision.

Tiles as Real-ESRGAN runs them: each tile is read with ``TILE_PAD`` pixels of context on
every side and only its own part of the output is kept, written straight into the result
(uint8). Memory stays bounded by one tile and the result, whatever the image's size.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from huabu.errors import InvalidRequest
from huabu.native.generation import upscaler_file

#: The architectures offered: super-resolution nets that need nothing but torch.
ARCHITECTURES = (
    "ESRGAN", "Compact", "SwinIR", "Swin2SR", "HAT", "DAT", "SPAN", "OmniSR", "RealCUGAN",
    "PLKSR", "ATD", "RGT", "DRCT",
)  # fmt: skip
#: Input pixels per tile side, and context read around it (Real-ESRGAN's tile and tile_pad).
TILE = 192
TILE_PAD = 10
#: How many loaded upscalers a worker keeps.
CACHE_SIZE = 2

_lock = threading.Lock()
_loaded_registry: Any = None


def _registry() -> Any:
    """spandrel's ArchRegistry holding ``ARCHITECTURES`` only, imported without running
    spandrel's ``__init__`` (see the module's docstring)."""
    global _loaded_registry
    with _lock:
        if _loaded_registry is not None:
            return _loaded_registry
        if "spandrel" not in sys.modules:
            spec = importlib.util.find_spec("spandrel")
            if spec is None or spec.submodule_search_locations is None:
                raise InvalidRequest(
                    "upscalers need the spandrel package on the worker", param="upscaler"
                )
            package = types.ModuleType("spandrel")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            sys.modules["spandrel"] = package
        registry_module = importlib.import_module("spandrel.__helpers.registry")
        registry = registry_module.ArchRegistry()
        for name in ARCHITECTURES:
            module = importlib.import_module(f"spandrel.architectures.{name}")
            registry.add(
                registry_module.ArchSupport.from_architecture(getattr(module, f"{name}Arch")())
            )
        _loaded_registry = registry
        return registry


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """An upscaler's tensors: ``.safetensors``, or a ``.pth``/``.pt`` read by torch's
    weights-only unpickler (tensors and plain containers only: no code runs)."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict", "model"):  # training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InvalidRequest(f"{path.name} holds no upscaler weights", param="upscaler")
    return state


def load(path: Path, device: torch.device) -> Any:
    """The upscaler in ``path`` as a spandrel descriptor on ``device``, or InvalidRequest
    when spandrel knows no upscaler in it."""
    registry = _registry()
    try:
        descriptor = registry.load(read_weights(path))
    except Exception as exc:  # spandrel's UnsupportedModelError, or a shape it refuses
        raise InvalidRequest(
            f"{path.name}: not an upscaler huabu can load (it reads {', '.join(ARCHITECTURES)})",
            param="upscaler",
        ) from exc
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise InvalidRequest(f"{path.name}: not an RGB upscaler", param="upscaler")
    return descriptor.to(device).eval()


@torch.inference_mode()
def run_tiled(
    descriptor: Any, image: Image.Image, tile: int = TILE, pad: int = TILE_PAD
) -> Image.Image:
    """``image`` through the upscaler once (×its scale), tile by tile."""
    scale = descriptor.scale
    source = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    height, width = source.shape[:2]
    pixels = torch.from_numpy(source).permute(2, 0, 1)[None]
    parameter = next(descriptor.model.parameters())
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            y0, x0 = max(top - pad, 0), max(left - pad, 0)
            y1, x1 = min(bottom + pad, height), min(right + pad, width)
            piece = pixels[:, :, y0:y1, x0:x1].to(parameter.device, parameter.dtype)
            result = descriptor(piece)[0]
            keep = result[
                :,
                (top - y0) * scale : (bottom - y0) * scale,
                (left - x0) * scale : (right - x0) * scale,
            ]
            out[top * scale : bottom * scale, left * scale : right * scale] = (
                (keep.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            )
    return Image.fromarray(out)


class Upscalers:
    """The library's upscalers, loaded on first use (the ``CACHE_SIZE`` latest kept)."""

    def __init__(self, library: Any, device: torch.device) -> None:
        self.library, self.device = library, device
        self._loaded: OrderedDict[Path, Any] = OrderedDict()
        self._lock = threading.Lock()

    def descriptor(self, name: str, *, param: str) -> Any:
        entry = self.library.find("upscalers", upscaler_file(name), param=param)
        with self._lock:
            if entry.path in self._loaded:
                self._loaded.move_to_end(entry.path)
                return self._loaded[entry.path]
            descriptor = load(entry.path, self.device)
            self._loaded[entry.path] = descriptor
            while len(self._loaded) > CACHE_SIZE:
                self._loaded.popitem(last=False)
            return descriptor

    def upscale(
        self, name: str, image: Image.Image, size: tuple[int, int], *, param: str
    ) -> Image.Image:
        """``image`` at ``size`` through the upscaler ``name``, as A1111 does it: the model
        runs until the image is at least that large (three times at most), then a Lanczos
        resize to the size."""
        descriptor = self.descriptor(name, param=param)
        for _ in range(3):
            if image.width >= size[0] and image.height >= size[1]:
                break
            image = run_tiled(descriptor, image)
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image
