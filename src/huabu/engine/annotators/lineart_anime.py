"""The anime lineart network of ``netG.pth``: pix2pix's U-Net generator (8 levels, 64 filters,
instance norm without affine parameters), as controlnet_aux 0.0.10 builds it (ported; the
original is junyanz/pytorch-CycleGAN-and-pix2pix, BSD)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from huabu.engine.annotators.family import Family, Networks, tensor


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class _Level(nn.Module):
    """One level of the U-Net: down, the levels inside, up; its input is passed around it."""

    def __init__(
        self,
        outer: int,
        inner: int,
        inside: nn.Module | None = None,
        channels_in: int | None = None,
        outermost: bool = False,
    ) -> None:
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(channels_in or outer, inner, kernel_size=4, stride=2, padding=1, bias=True)
        if outermost:
            assert inside is not None
            up = nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1)
            layers = [down, inside, nn.ReLU(True), up, nn.Tanh()]
        elif inside is None:  # innermost
            up = nn.ConvTranspose2d(inner, outer, kernel_size=4, stride=2, padding=1, bias=True)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, _norm(outer)]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, kernel_size=4, stride=2, padding=1, bias=True)
            layers = [
                nn.LeakyReLU(0.2, True),
                down,
                _norm(inner),
                inside,
                nn.ReLU(True),
                up,
                _norm(outer),
            ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class AnimeLineart(nn.Module):
    """``netG.pth``: input in −1…1, a 256-multiple size; output −1…1, light lines on dark."""

    def __init__(self, levels: int = 8, filters: int = 64) -> None:
        super().__init__()
        block = _Level(filters * 8, filters * 8)
        for _ in range(levels - 5):
            block = _Level(filters * 8, filters * 8, block)
        block = _Level(filters * 4, filters * 8, block)
        block = _Level(filters * 2, filters * 4, block)
        block = _Level(filters, filters * 2, block)
        self.model = _Level(1, filters, block, channels_in=3, outermost=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


FILE = "netG.pth"


def draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """The anime lineart: its U-Net takes sides in multiples of 256 and −1…1, and draws light
    lines on dark (inverted, as A1111 does)."""
    height, width = pixels.shape[:2]
    size = (256 * -(-width // 256), 256 * -(-height // 256))
    resized = cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC)
    x = tensor(resized, networks.device) / 127.5 - 1.0
    line = (networks.network(FILE)(x)[0, 0] * 127.5 + 127.5).cpu().numpy()
    line = cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC)
    return 255 - line.clip(0, 255)


FAMILY = Family(needs={"lineart_anime": (FILE,)}, networks={FILE: AnimeLineart}, draw=draw)
