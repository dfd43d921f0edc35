"""ControlNet preprocessors: the control map of an input image.

The weightless ones (``none``, ``canny``, ``shuffle``, ``lineart_standard``) are
:mod:`.weightless`. The others run a network, one family per module, each described by the
same small spec (:class:`.family.Family`): HED (:mod:`.hed`), lineart (:mod:`.lineart`),
anime lineart (:mod:`.lineart_anime`), PiDiNet (:mod:`.pidinet`), M-LSD (:mod:`.mlsd`),
OpenPose (:mod:`.openpose`), DWPose (:mod:`.dwpose`), MiDaS (:mod:`.midas`), LeReS and its
boosting (:mod:`.leres`, :mod:`.leres_boost`), Bae's normals (:mod:`.normal_bae`), ZoeDepth
(:mod:`.zoe`) and MediaPipe's face mesh (:mod:`.mediapipe_face`).

Their weights are the files an operator puts in ``$HUABU_HOME/models/annotators/`` under the
names of lllyasviel/Annotators, the files A1111's sd-webui-controlnet and ComfyUI's
controlnet_aux download. The networks and their pre- and post-processing are ported from
controlnet_aux 0.0.10 (Apache-2.0) or written anew where the original's licence or
dependencies (torchvision, timm) rule it out; each gave the reference's outputs on the same
weights when written, and ``tests/test_annotators.py`` pins every family's output since.
Weights load with ``torch.load(weights_only=True)``: the files are plain state dicts, and no
code in them runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from huabu.catalog.preprocessors import check
from huabu.engine.annotators import (
    dwpose,
    hed,
    leres,
    lineart,
    lineart_anime,
    mediapipe_face,
    midas,
    mlsd,
    normal_bae,
    openpose,
    pidinet,
    weightless,
    zoe,
)
from huabu.engine.annotators.family import Family, scribble
from huabu.errors import ModelUnavailable

#: Every family that runs a network, and the one whose network ships in a package.
FAMILIES: tuple[Family, ...] = tuple(
    module.FAMILY
    for module in (
        hed,
        lineart,
        pidinet,
        lineart_anime,
        mlsd,
        openpose,
        dwpose,
        midas,
        leres,
        zoe,
        normal_bae,
        mediapipe_face,
    )
)
#: Preprocessor name → its family.
FAMILY_OF: dict[str, Family] = {name: family for family in FAMILIES for name in family.needs}
#: Annotator file → the family whose network it holds.
_FILE_FAMILY: dict[str, Family] = {f: family for family in FAMILIES for f in family.networks}

#: Loaded networks kept per worker process; the least recently used beyond this are dropped.
MAX_LOADED = 3
#: The side the detectors see (A1111's default "processor resolution"), or the output's
#: shorter side when that is smaller.
DETECT_RESOLUTION = 512


class Annotators:
    """The annotator networks of one worker process, loaded on first use from the files
    ``locate`` finds (a file name → its path, or ModelUnavailable), at most ``MAX_LOADED``."""

    def __init__(self, locate: Callable[[str], Path], device: torch.device) -> None:
        self.locate = locate
        self.device = device
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def network(self, file_name: str) -> nn.Module:
        return self.cached(file_name, lambda: self._load(file_name))

    def cached(self, key: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
                while len(self._loaded) > MAX_LOADED:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def _load(self, file_name: str) -> nn.Module:
        path = self.locate(file_name)
        family = _FILE_FAMILY[file_name]
        unused = family.unused.get(file_name, ())
        recomputed = family.recomputed.get(file_name, ())
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)  # PiDiNet's is a training checkpoint
            for entry in ("model", "depth_model"):  # so are MiDaS's, Bae's, LeReS's, Zoe's
                if isinstance(state.get(entry), dict):
                    state = state[entry]
            state = {k.removeprefix("module."): v for k, v in state.items()}
            state = {
                k: v
                for k, v in state.items()
                if not k.startswith(unused) and not k.endswith(recomputed)
            }
            with torch.device("meta"):  # no random initialisation: the file has every weight
                network = family.networks[file_name]()
            network.load_state_dict(state, assign=True)
        except (OSError, RuntimeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelUnavailable(
                f"annotator file models/annotators/{file_name} is damaged or not the network "
                "it is named for"
            ) from exc
        return network.to(self.device, torch.float32).eval()

    def draw(self, name: str, image: Image.Image) -> Image.Image:
        """Preprocessor ``name``'s control map of ``image``, at ``image``'s size."""
        family = FAMILY_OF[name]
        if family.package is not None:
            check(name, set(), param="preprocessor")  # refused if its package is missing
        width, height = image.size
        pixels = detect_size(np.asarray(image.convert("RGB")), min(width, height))
        with torch.inference_mode():
            drawn = family.draw(self, name, pixels)
        if drawn.ndim == 3:  # a colour map
            return Image.fromarray(
                cv2.resize(drawn, (width, height), interpolation=cv2.INTER_LINEAR)
            )
        edges = drawn.clip(0, 255).astype(np.uint8)
        edges = cv2.resize(edges, (width, height), interpolation=cv2.INTER_LINEAR)
        if name.startswith("scribble"):
            edges = scribble(edges)
        return Image.fromarray(np.stack([edges] * 3, axis=2))


def run(
    name: str, image: Image.Image, *, seed: int = 0, annotators: Annotators | None = None
) -> Image.Image:
    """The control map of ``image`` for preprocessor ``name``: a network's on ``annotators``
    (the worker's), a weightless one's here."""
    if name not in FAMILY_OF:
        return weightless.run(name, image, seed=seed)
    if annotators is None:
        check(name, set(), param="preprocessor")  # a network's files: refused, naming them
        annotators = Annotators(_nowhere, torch.device("cpu"))  # a package's network
    return annotators.draw(name, image)


def _nowhere(file_name: str) -> Path:
    raise ModelUnavailable(f"annotator file models/annotators/{file_name} is not here")


def detect_size(pixels: np.ndarray, shorter: int) -> np.ndarray:
    """controlnet_aux's ``resize_image``: the shorter side at the detect resolution, both
    sides rounded to multiples of 64."""
    resolution = min(DETECT_RESOLUTION, shorter)
    height, width = pixels.shape[:2]
    k = resolution / min(height, width)
    size = (max(64, round(width * k / 64) * 64), max(64, round(height * k / 64) * 64))
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(pixels, size, interpolation=interpolation)
