"""PiDiNet (pixel difference networks, Su et al. 2021), the soft-edge detector of
``table5_pidinet.pth``: the "carv4" layout with dilation 24 and spatial attention, as
controlnet_aux 0.0.10 builds it (ported; MIT/Apache-2.0 licensed upstream).

A pixel-difference convolution is a 3×3 convolution of differences between pixels: central
(``cd``: each neighbour minus the centre), angular (``ad``: each neighbour minus the next one
clockwise) or radial (``rd``: a 5×5 ring minus the inner ring); ``cv`` is a plain convolution.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from huabu.engine.annotators.family import Family, Networks, safe, tensor

_CARV4 = ("cd", "ad", "rd", "cv") * 4
_CLOCKWISE = [3, 0, 1, 6, 4, 2, 7, 8, 5]
_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def _difference_conv(kind: str) -> Callable[..., torch.Tensor]:
    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if kind == "cd":
            centre = F.conv2d(x, weight.sum(dim=[2, 3], keepdim=True), stride=stride, groups=groups)
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups) - centre
        shape = weight.shape
        flat = weight.view(shape[0], shape[1], -1)
        if kind == "ad":
            kernel = (flat - flat[:, :, _CLOCKWISE]).view(shape)
            return F.conv2d(x, kernel, bias, stride, padding, dilation, groups)
        ring = torch.zeros(shape[0], shape[1], 25, device=weight.device, dtype=weight.dtype)
        ring[:, :, _OUTER] = flat[:, :, 1:]
        ring[:, :, _INNER] = -flat[:, :, 1:]
        return F.conv2d(
            x, ring.view(shape[0], shape[1], 5, 5), bias, stride, 2 * dilation, dilation, groups
        )

    return F.conv2d if kind == "cv" else conv


class _DifferenceConv(nn.Module):
    def __init__(
        self, kind: str, channels_in: int, channels_out: int, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels_out, channels_in // groups, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels_out)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.conv, self.groups = _difference_conv(kind), groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.weight, self.bias, 1, 1, 1, self.groups)


class _Block(nn.Module):
    def __init__(self, kind: str, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1)
        self.conv1 = _DifferenceConv(kind, channels_in, channels_in, groups=channels_in)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = self.pool(x)
        y = self.conv2(self.relu2(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class _Dilations(nn.Module):  # CDCM: compact dilation convolutions
    def __init__(self, channels_in: int, channels: int) -> None:
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels_in, channels, 1)
        for index, dilation in enumerate((5, 7, 9, 11), start=1):
            self.add_module(
                f"conv2_{index}",
                nn.Conv2d(channels, channels, 3, dilation=dilation, padding=dilation, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(self.relu1(x))
        return sum(getattr(self, f"conv2_{i}")(x) for i in range(1, 5))


class _Attention(nn.Module):  # CSAM: compact spatial attention
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(self.relu1(x))))


class _Reduce(nn.Module):  # MapReduce
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    """``table5_pidinet.pth`` (its ``state_dict``, keys without ``module.``)."""

    def __init__(self, width: int = 60, dilation: int = 24) -> None:
        super().__init__()
        kinds = _CARV4
        self.init_block = _DifferenceConv(kinds[0], 3, width)
        planes = [width, 2 * width, 4 * width, 4 * width]
        channels_in = width
        for level, plane in enumerate(planes, start=1):
            for index in range(1, 5 if level > 1 else 4):
                layer = index if level == 1 else (level - 1) * 4 + index - 1
                stride = 2 if level > 1 and index == 1 else 1
                self.add_module(
                    f"block{level}_{index}", _Block(kinds[layer], channels_in, plane, stride)
                )
                channels_in = plane
        self.dilations = nn.ModuleList(_Dilations(plane, dilation) for plane in planes)
        self.attentions = nn.ModuleList(_Attention(dilation) for _ in planes)
        self.conv_reduces = nn.ModuleList(_Reduce(dilation) for _ in planes)
        self.classifier = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused edge map, 0–1."""
        height, width = x.shape[2:]
        h = self.init_block(x)
        levels = []
        for level in range(1, 5):
            for index in range(1, 5 if level > 1 else 4):
                h = getattr(self, f"block{level}_{index}")(h)
            levels.append(h)
        edges = [
            F.interpolate(
                reduce(attend(dilate(h))), (height, width), mode="bilinear", align_corners=False
            )
            for h, dilate, attend, reduce in zip(
                levels, self.dilations, self.attentions, self.conv_reduces, strict=True
            )
        ]
        return torch.sigmoid(self.classifier(torch.cat(edges, dim=1)))


FILE = "table5_pidinet.pth"


def draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """Soft edges; BGR in, as PiDiNet was trained."""
    x = tensor(pixels, networks.device)
    edge = networks.network(FILE)(x.flip(1) / 255.0)[0, 0].cpu().numpy()
    return (safe(edge) if name.endswith("safe") else edge) * 255.0


FAMILY = Family(
    needs={
        name: (FILE,)
        for name in ("softedge_pidinet", "softedge_pidsafe", "scribble_pidinet", "scribble_pidsafe")
    },
    networks={FILE: PiDiNet},
    draw=draw,
)
