"""HED soft edges (``softedge_hed``, ``…_hedsafe``, ``scribble_hed``, ``…_hedsafe``):
lllyasviel's Apache-2.0 ``ControlNetHED_Apache2`` as controlnet_aux 0.0.10 runs it, on
``ControlNetHED.pth``."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from huabu.engine.annotators.family import Family, Networks, safe, tensor

FILE = "ControlNetHED.pth"


class _DoubleConv(nn.Module):
    def __init__(self, channels_in: int, channels: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(channels_in, channels, 3, padding=1))
        for _ in range(1, layers):
            self.convs.append(nn.Conv2d(channels, channels, 3, padding=1))
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, down: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if down:
            x = nn.functional.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = nn.functional.relu(conv(x))
        return x, self.projection(x)


class Hed(nn.Module):
    """``ControlNetHED.pth``: five VGG-like levels, each projected to an edge map."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.block1 = _DoubleConv(3, 64, 2)
        self.block2 = _DoubleConv(64, 128, 2)
        self.block3 = _DoubleConv(128, 256, 3)
        self.block4 = _DoubleConv(256, 512, 3)
        self.block5 = _DoubleConv(512, 512, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, projections = x - self.norm, []
        for index, block in enumerate(
            (self.block1, self.block2, self.block3, self.block4, self.block5)
        ):
            h, projection = block(h, down=index > 0)
            projections.append(projection)
        return projections


def draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    projections = networks.network(FILE)(tensor(pixels, networks.device))
    maps = [
        cv2.resize(p[0, 0].float().cpu().numpy(), (width, height), interpolation=cv2.INTER_LINEAR)
        for p in projections
    ]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    return (safe(edge) if name.endswith("safe") else edge) * 255.0


FAMILY = Family(
    needs={
        name: (FILE,)
        for name in ("softedge_hed", "softedge_hedsafe", "scribble_hed", "scribble_hedsafe")
    },
    networks={FILE: Hed},
    draw=draw,
)
