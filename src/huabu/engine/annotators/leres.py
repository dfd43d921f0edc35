"""LeReS (Yin et al., "Learning to Recover 3D Scene Shape from a Single Image"), the
``depth_leres`` preprocessor: ``res101.pth``'s depth network, written anew in plain torch after
controlnet_aux's copy (MIT, from thygate's depthmap script and AdelaiDepth).

A ResNeXt-101 32×8d encoder (torchvision's layout) gives features at 1/4 … 1/32; the decoder
fuses them coarse to fine (feature-transfer blocks: a convolution, then a residual branch),
and an output block makes relative depth at the input's size. Parameter names are the file's
(under its ``depth_model`` entry).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from huabu.engine.annotators import leres_boost
from huabu.engine.annotators.family import Family, Networks, imagenet, tensor


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, planes: int, stride: int, first: bool) -> None:
        super().__init__()
        width, c_out = planes // 64 * 8 * 32, planes * 4  # 32 groups of 8 per 64 planes
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=32, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if first
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class _ResNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c_in = 64
        for index, (planes, blocks, stride) in enumerate(
            ((64, 3, 1), (128, 4, 2), (256, 23, 2), (512, 3, 2)), start=1
        ):
            layer = []
            for block in range(blocks):
                layer.append(_Bottleneck(c_in, planes, stride if block == 0 else 1, block == 0))
                c_in = planes * 4
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        features = []
        for index in range(1, 5):
            x = getattr(self, f"layer{index}")(x)
            features.append(x)
        return features


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = _ResNeXt()


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class _Transfer(nn.Module):
    """A feature-transfer block. (The original's branch starts with an in-place ReLU, which
    also rectifies what it is added to: both are rectified here, explicitly.)"""

    def __init__(self, c_in: int, c_mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.conv_branch = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 3, padding=1),
            nn.BatchNorm2d(c_mid),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.relu(x + self.conv_branch[1:](x))


class _Fusion(nn.Module):
    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__()
        self.ftb1 = _Transfer(c_in, c_mid)
        self.ftb2 = _Transfer(c_mid, c_out)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return _up(self.ftb2(self.ftb1(low) + high))


class _Output(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.adapt_conv = nn.Sequential(
            nn.Conv2d(c_in, c_in // 2, 3, padding=1),
            nn.BatchNorm2d(c_in // 2),
            nn.ReLU(),
            nn.Conv2d(c_in // 2, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up(self.adapt_conv(x))


class _Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _Transfer(2048, 512)
        self.conv1 = nn.Conv2d(512, 256, 3, padding=1)
        self.ffm2 = _Fusion(1024, 256, 256)
        self.ffm1 = _Fusion(512, 256, 256)
        self.ffm0 = _Fusion(256, 256, 256)
        self.outconv = _Output(256)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = _up(self.conv1(self.conv(features[3])))
        x = self.ffm2(features[2], x)
        x = self.ffm1(features[1], x)
        return self.outconv(self.ffm0(features[0], x))


class _DepthModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_modules = _Encoder()
        self.decoder_modules = _Decoder()


class Leres(nn.Module):
    """Relative depth (larger: farther) of ImageNet-normalised BGR images, sides multiples
    of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.depth_model = _DepthModel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.depth_model
        return model.decoder_modules(model.encoder_modules.encoder(x))[:, 0]


class _UnetLevel(nn.Module):
    """One level of pix2pix's U-Net (its ``UnetSkipConnectionBlock``, without normalisation:
    the merge network was trained with none). The Sequential keeps the original's indices,
    which are the file's parameter names; its in-place LeakyReLU also rectified what the skip
    connection carries, which is written out here."""

    def __init__(
        self, outer: int, inner: int, inside: nn.Module | None = None, *, c_in: int | None = None
    ) -> None:
        super().__init__()
        self.outermost = c_in is not None
        down = nn.Conv2d(c_in or outer, inner, 4, 2, 1, bias=False)
        if self.outermost:
            layers = [
                down,
                inside,
                nn.ReLU(),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1),
                nn.Tanh(),
            ]
        elif inside is None:  # the innermost level
            up = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False)
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), up, nn.Identity()]
        else:
            up = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False)
            layers = [nn.LeakyReLU(0.2), down, nn.Identity(), inside, nn.ReLU(), up, nn.Identity()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        x = F.leaky_relu(x, 0.2)
        return torch.cat([x, self.model[1:](x)], 1)


class MergeNet(nn.Module):
    """``latest_net_G.pth``: the boosting method's merge network, pix2pix's ``unet_1024``
    generator (ten levels, 64 filters, no normalisation). It takes a low- and a
    high-resolution depth map (−1…1, 1024²) and gives their merge (−1…1)."""

    def __init__(self) -> None:
        super().__init__()
        level = _UnetLevel(512, 512)
        for _ in range(5):
            level = _UnetLevel(512, 512, level)
        for outer in (256, 128, 64):
            level = _UnetLevel(outer, outer * 2, level)
        self.model = _UnetLevel(1, 64, level, c_in=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


FILE, MERGE_FILE = "res101.pth", "latest_net_G.pth"


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """LeReS's depth, boosted for depth_leres++ (with the merge network), scaled through 16
    bits as controlnet_aux does, and inverted: near is white."""
    network = networks.network(FILE)

    def estimate(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (width, height))
        # Normalised from 0…255, not 0…1, as sd-webui-controlnet and controlnet_aux feed it
        # (their ToTensor is handed float32 pixels, which it does not scale).
        depth = network(imagenet(tensor(bgr, networks.device), scale=1.0))[0].float()
        return cv2.resize(
            depth.cpu().numpy(), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_CUBIC
        )

    height, width = pixels.shape[:2]
    if MERGE_FILE in FAMILY.needs[name]:
        merger = networks.network(MERGE_FILE)
        depth = leres_boost.boost(pixels, estimate, merger, max(width, height))
    else:
        depth = estimate(pixels, width, height)
    depth = depth.astype(np.float64)
    low, high = depth.min(), depth.max()
    if high - low > np.finfo("float").eps:
        depth = (65535 * (depth - low) / (high - low)).astype(np.uint16)
    else:
        depth = np.zeros(depth.shape, dtype=np.uint16)
    return 255.0 - cv2.convertScaleAbs(depth, alpha=255.0 / 65535.0)


FAMILY = Family(
    needs={"depth_leres": (FILE,), "depth_leres++": (FILE, MERGE_FILE)},
    networks={FILE: Leres, MERGE_FILE: MergeNet},
    draw=_draw,
)
