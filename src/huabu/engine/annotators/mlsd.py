"""M-LSD (NAVER, Apache-2.0), the straight-line detector of ``mlsd_large_512_fp32.pth``: a
MobileNetV2 backbone with a line-segment decoder, and the decoding of its centre and
displacement maps into segments, as controlnet_aux 0.0.10 does it (ported)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from huabu.engine.annotators.family import Family


def _conv_bn(
    channels_in: int,
    channels_out: int,
    kernel: int,
    relu: type[nn.Module] = nn.ReLU,
    padding: int = 0,
    dilation: int = 1,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel, padding=padding, dilation=dilation),
        nn.BatchNorm2d(channels_out),
        relu(),
    )


class _BlockA(nn.Module):  # lateral: the finer level and the coarser one, joined
    def __init__(self, fine: int, coarse: int, upscale: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv_bn(coarse, 64, 1)
        self.conv2 = _conv_bn(fine, 64, 1)
        self.upscale = upscale

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        coarse = self.conv1(coarse)
        if self.upscale:
            coarse = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(fine), coarse), dim=1)


class _BlockB(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels_in, channels_in, 3, padding=1)
        self.conv2 = _conv_bn(channels_in, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class _BlockC(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels_in, channels_in, 3, padding=5, dilation=5)
        self.conv2 = _conv_bn(channels_in, channels_in, 3, padding=1)
        self.conv3 = nn.Conv2d(channels_in, channels_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class _ConvBNReLU6(nn.Sequential):
    def __init__(
        self, channels_in: int, channels_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(
            nn.Conv2d(
                channels_in, channels_out, kernel, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(channels_out),
            nn.ReLU6(inplace=True),
        )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:  # TensorFlow's "same" padding, as the model was trained
            x = F.pad(x, (0, 1, 0, 1), "constant", 0)
        for module in self:
            x = module(x)
        return x


class _InvertedResidual(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = channels_in * expand
        self.residual = stride == 1 and channels_in == channels_out
        layers: list[nn.Module] = [_ConvBNReLU6(channels_in, hidden, 1)] if expand != 1 else []
        layers += [
            _ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, channels_out, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class _Backbone(nn.Module):  # MobileNetV2's first 14 layers; 4 input channels (RGB + ones)
    def __init__(self) -> None:
        super().__init__()
        features: list[nn.Module] = [_ConvBNReLU6(4, 32, stride=2)]
        channels = 32
        for expand, width, repeats, stride in (
            (1, 16, 1, 1),
            (6, 24, 2, 2),
            (6, 32, 3, 2),
            (6, 64, 4, 2),
            (6, 96, 3, 1),
        ):
            for index in range(repeats):
                features.append(
                    _InvertedResidual(channels, width, stride if index == 0 else 1, expand)
                )
                channels = width
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        selected = []
        for index, feature in enumerate(self.features):
            x = feature(x)
            if index in (1, 3, 6, 10, 13):
                selected.append(x)
        return selected


class Mlsd(nn.Module):
    """``mlsd_large_512_fp32.pth``: 16 maps at half the input size; 7… are the centre map and
    the 4 start/end displacements that ``segments`` reads."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Backbone()
        self.block15 = _BlockA(64, 96, upscale=False)
        self.block16 = _BlockB(128, 64)
        self.block17 = _BlockA(32, 64)
        self.block18 = _BlockB(128, 64)
        self.block19 = _BlockA(24, 64)
        self.block20 = _BlockB(128, 64)
        self.block21 = _BlockA(16, 64)
        self.block22 = _BlockB(128, 64)
        self.block23 = _BlockC(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:, :, :]


def segments(
    network: nn.Module, pixels: np.ndarray, score: float = 0.1, distance: float = 0.1
) -> list[tuple[float, float, float, float]]:
    """The line segments (x0, y0, x1, y1, in ``pixels``' coordinates) M-LSD finds: the 200
    strongest centres (3×3 local maxima) over ``score`` whose segment is longer than
    ``distance``."""
    height, width = pixels.shape[:2]
    device = next(network.parameters()).device
    ones = np.ones((height, width, 1))
    x = np.concatenate([pixels, ones], axis=-1).transpose(2, 0, 1)[None].astype(np.float32)
    maps = network(torch.from_numpy(x / 127.5 - 1.0).float().to(device)).detach()
    heat = torch.sigmoid(maps[:, 0])
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
    scores, indices = torch.topk(heat.reshape(-1), min(200, heat.numel()))
    map_width = maps.shape[3]
    displacement = maps[0, 1:5].cpu().numpy().transpose(1, 2, 0)
    lengths = np.sqrt(((displacement[:, :, :2] - displacement[:, :, 2:]) ** 2).sum(axis=-1))
    found = []
    for value, index in zip(scores.cpu().numpy(), indices.cpu().numpy(), strict=True):
        y, x_ = divmod(int(index), map_width)
        if value > score and lengths[y, x_] > distance:
            dx0, dy0, dx1, dy1 = displacement[y, x_]
            # Maps are at half size: ×2 back to the input's pixels.
            found.append((2 * (x_ + dx0), 2 * (y + dy0), 2 * (x_ + dx1), 2 * (y + dy1)))
    return found


def draw(network: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The M-LSD control map: the segments drawn white, 1 px, on black."""
    canvas = np.zeros(pixels.shape[:2], dtype=np.uint8)
    for x0, y0, x1, y1 in segments(network, pixels):
        cv2.line(canvas, (int(x0), int(y0)), (int(x1), int(y1)), 255, 1)
    return canvas


FILE = "mlsd_large_512_fp32.pth"
FAMILY = Family(
    needs={"mlsd": (FILE,)},
    networks={FILE: Mlsd},
    draw=lambda networks, name, pixels: draw(networks.network(FILE), pixels),
)
