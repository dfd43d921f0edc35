"""Bae et al.'s surface-normal network (``scannet.pt``), the ``normal_bae`` preprocessor,
written anew in plain torch after baegwangbin/surface_normal_uncertainty (MIT) and the
EfficientNet of Ross Wightman's gen-efficientnet (Apache-2.0) that its weights were made with.

The encoder is EfficientNet-B5 in its TensorFlow-compatible form (``tf_efficientnet_b5_ap``:
"same" padding, batch norms of ε 1e-3, swish, squeeze-and-excitation); the decoder upsamples
its features at 1/32 … 1/2 and predicts a normal (and a concentration) at 1/8, then refines
it at 1/4, 1/2 and full size, every pixel at inference. Parameter names are the file's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from huabu.engine.annotators.family import Family, Networks, imagenet, tensor
from huabu.engine.annotators.midas import SameConv

#: EfficientNet-B0's stages (block kind, repeats, kernel, stride, expansion, channels) and
#: B5's multipliers of channels and depth.
_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40),
           ("ir", 3, 3, 2, 6, 80), ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192),
           ("ir", 1, 3, 1, 6, 320))  # fmt: skip
_WIDER, _DEEPER = 1.6, 2.2


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """A bias-free convolution padded as TensorFlow's "same"."""
    return SameConv(c_in, c_out, kernel, stride, groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class _Block(nn.Module):
    """A depthwise-separable block (``ds``, no expansion) or an inverted residual (``ir``)."""

    def __init__(
        self, kind: str, c_in: int, c_out: int, kernel: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        self.kind, self.residual = kind, stride == 1 and c_in == c_out
        middle = c_in if kind == "ds" else _divisible(c_in * expand)
        if kind == "ir":
            self.conv_pw, self.bn1 = _conv(c_in, middle, 1), _bn(middle)
        self.conv_dw = _conv(middle, middle, kernel, stride, groups=middle)
        if kind == "ds":
            self.bn1 = _bn(middle)
        else:
            self.bn2 = _bn(middle)
        self.se = _SqueezeExcite(middle, max(1, int(c_in * 0.25 + 0.5)))
        if kind == "ds":
            self.conv_pw, self.bn2 = _conv(middle, c_out, 1), _bn(c_out)
        else:
            self.conv_pwl, self.bn3 = _conv(middle, c_out, 1), _bn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "ds":
            y = self.se(F.silu(self.bn1(self.conv_dw(x))))
            y = self.bn2(self.conv_pw(y))
        else:
            y = F.silu(self.bn1(self.conv_pw(x)))
            y = self.se(F.silu(self.bn2(self.conv_dw(y))))
            y = self.bn3(self.conv_pwl(y))
        return y + x if self.residual else y


class _EfficientNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        stem = _divisible(32 * _WIDER)
        self.conv_stem, self.bn1 = _conv(3, stem, 3, 2), _bn(stem)
        stages, c_in = [], stem
        for kind, repeats, kernel, stride, expand, channels in _STAGES:
            c_out, blocks = _divisible(channels * _WIDER), []
            for index in range(math.ceil(repeats * _DEEPER)):
                blocks.append(
                    _Block(kind, c_in, c_out, kernel, stride if index == 0 else 1, expand)
                )
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = _conv(c_in, _divisible(1280 * _WIDER), 1)
        self.bn2 = _bn(self.conv_head.out_channels)  # in the file; the decoder reads before it


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.original_model = _EfficientNet()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stages 1, 2, 3 and 5 (1/2 … 1/16) and the head's convolution (1/32)."""
        net = self.original_model
        x = F.silu(net.bn1(net.conv_stem(x)))
        found = []
        for index, stage in enumerate(net.blocks):
            x = stage(x)
            if index in (0, 1, 2, 4):
                found.append(x)
        return [*found, net.conv_head(x)]


class _Up(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([x, skip], 1))


def _head(c_in: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, 128, 1),
        nn.ReLU(),
        nn.Conv1d(128, 128, 1),
        nn.ReLU(),
        nn.Conv1d(128, 128, 1),
        nn.ReLU(),
        nn.Conv1d(128, 4, 1),
    )


def _normalise(out: torch.Tensor) -> torch.Tensor:
    """Unit normals, and the concentration κ (ELU + 1.01)."""
    normal, kappa = out[:, :3], out[:, 3:]
    norm = torch.sqrt((normal**2).sum(1, keepdim=True)) + 1e-10
    return torch.cat([normal / norm, F.elu(kappa) + 1.01], 1)


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv2 = nn.Conv2d(2048, 2048, 1)
        self.up1, self.up2 = _Up(2048 + 176, 1024), _Up(1024 + 64, 512)
        self.up3, self.up4 = _Up(512 + 40, 256), _Up(256 + 24, 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4, self.out_conv_res2 = _head(512 + 4), _head(256 + 4)
        self.out_conv_res1 = _head(128 + 4)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        half, quarter, eighth, sixteenth, head = features
        d2 = self.up2(self.up1(self.conv2(head), sixteenth), eighth)
        d3 = self.up3(d2, quarter)
        d4 = self.up4(d3, half)
        out = _normalise(self.out_conv_res8(d2))
        for feature, refine in (
            (d2, self.out_conv_res4),
            (d3, self.out_conv_res2),
            (d4, self.out_conv_res1),
        ):
            up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
            joined = torch.cat([up(feature), up(out)], 1)
            batch, channels, height, width = joined.shape
            out = _normalise(refine(joined.view(batch, channels, -1))).view(batch, 4, height, width)
        return out


class NormalBae(nn.Module):
    """Surface normals (x, y, z in −1…1, then κ) of ImageNet-normalised images, sides
    multiples of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _Encoder()
        self.decoder = _Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


#: Keys a file may hold that the normals do not use: the EfficientNet's ImageNet classifier.
UNUSED = ("encoder.original_model.classifier.",)


FILE = "scannet.pt"


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """Bae's surface normals as a colour map: x, y, z from −1…1 to R, G, B in 0…255."""
    normal = networks.network(FILE)(imagenet(tensor(pixels, networks.device)))[0, :3]
    normal = ((normal + 1) * 0.5).clip(0, 1).permute(1, 2, 0).cpu().numpy()
    return (normal * 255.0).clip(0, 255).astype(np.uint8)


FAMILY = Family(
    needs={"normal_bae": (FILE,)}, networks={FILE: NormalBae}, unused={FILE: UNUSED}, draw=_draw
)
