"""Lineart (``lineart_realistic``, its alias ``lineart``, ``lineart_coarse``):
informative-drawings' generator (MIT) as controlnet_aux 0.0.10 runs it, on ``sk_model.pth``
and ``sk_model2.pth``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from huabu.engine.annotators.family import Family, Networks, tensor


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3),
            nn.InstanceNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """``sk_model.pth`` (realistic) and ``sk_model2.pth`` (coarse): informative-drawings'
    generator, 3 residual blocks."""

    def __init__(self, residual_blocks: int = 3) -> None:
        super().__init__()
        norm = nn.InstanceNorm2d
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), norm(64), nn.ReLU(inplace=True)
        )
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1),
            norm(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 256, 3, stride=2, padding=1),
            norm(256),
            nn.ReLU(inplace=True),
        )
        self.model2 = nn.Sequential(*[_Residual(256) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1),
            norm(128),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1),
            norm(64),
            nn.ReLU(inplace=True),
        )
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """Dark lines on white, inverted as A1111 does."""
    network = networks.network(FAMILY.needs[name][0])
    lines = network(tensor(pixels, networks.device) / 255.0)[0, 0].cpu().numpy() * 255.0
    return 255 - lines.clip(0, 255)


FAMILY = Family(
    needs={
        "lineart_realistic": ("sk_model.pth",),
        "lineart": ("sk_model.pth",),
        "lineart_coarse": ("sk_model2.pth",),
    },
    networks={"sk_model.pth": LineartGenerator, "sk_model2.pth": LineartGenerator},
    draw=draw,
)
