"""The one small spec each annotator family module fills in as its ``FAMILY``, and the steps
the families share.

A family is one network (or a few that work together: OpenPose's body, hand and face nets)
and the preprocessor names that run it. It says which files of ``models/annotators/`` each
name needs, how each file's network is built (then filled from the file, see
``annotators.Annotators``), which keys a published file may hold that the network does not
use, and how it draws a picture's control map. The catalog's torch-free table of names and
files (``catalog.preprocessors``) is tested against these specs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import nn


class Networks(Protocol):
    """What a family's ``draw`` gets: the worker's loaded networks (``annotators.Annotators``)."""

    device: torch.device

    def network(self, file_name: str) -> nn.Module: ...

    def cached(self, key: str, load: Callable[[], Any]) -> Any: ...

    def locate(self, file_name: str) -> Path: ...


#: A family's control map of one picture: (networks, preprocessor name, RGB pixels at the
#: detect size) → the map at that size, grey (H×W, 0…255) or colour (H×W×3, uint8).
Draw = Callable[[Networks, str, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Family:
    #: Preprocessor name → the annotator files it loads (none: the network ships in
    #: ``package``).
    needs: dict[str, tuple[str, ...]]
    draw: Draw
    #: Annotator file → its network, built empty (on the meta device) and filled from the file.
    networks: dict[str, Callable[[], nn.Module]] = field(default_factory=dict)
    #: Key prefixes a file may hold that its network does not use (dropped before loading).
    unused: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Key endings of buffers a file may hold that its network computes itself (dropped too).
    recomputed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The Python package that ships the network, where it is not a file of the library.
    package: str | None = None


def tensor(pixels: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB pixels (H×W×3, 0…255) as a float batch of one, N×C×H×W, still 0…255."""
    return torch.from_numpy(pixels.copy()).float().permute(2, 0, 1)[None].to(device)


#: ImageNet's mean and deviation (what the normals and LeReS networks were trained on).
_IMAGENET = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))


def imagenet(x: torch.Tensor, scale: float = 1 / 255) -> torch.Tensor:
    """0…255 pixels normalised with ImageNet's mean and deviation (per channel, in order),
    after scaling by ``scale``."""
    mean, std = (t.to(x.device)[None, :, None, None] for t in _IMAGENET)
    return (x * scale - mean) / std


def safe(edge: np.ndarray) -> np.ndarray:
    """controlnet_aux's "safe step": quantised to 3 levels, so fewer hidden details leak."""
    return (edge * 3.0).astype(np.int32).astype(np.float32) / 2.0


def scribble(edges: np.ndarray) -> np.ndarray:
    """controlnet_aux's scribble post-processing: thin (non-maximum suppression), blur, then
    every touched pixel white."""
    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), 3.0)
    kernels = [
        np.array(k, dtype=np.uint8)
        for k in (
            [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
            [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
            [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
        )
    ]
    thin = np.zeros_like(blurred)
    for kernel in kernels:
        np.putmask(thin, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    lines = np.where(thin > 127, 255, 0).astype(np.uint8)
    lines = cv2.GaussianBlur(lines, (0, 0), 3.0)
    return np.where(lines > 4, 255, 0).astype(np.uint8)
