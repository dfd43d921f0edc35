"""MiDaS DPT-Hybrid (``dpt_hybrid-midas-501f0c75.pt``), the depth network of the ``depth`` and
``depth_midas`` preprocessors, written anew in plain torch after MiDaS (MIT) and the timm
layers its weights were made with (Apache-2.0): timm cannot be installed here (it imports
torchvision).

The network: a ResNet-50-style stem and three stages (timm's ResNetV2 without
pre-activation: weight-standardised convolutions with TensorFlow's "same" padding, group
norms), whose 1/16 features are a ViT-B/16's patches (12 blocks; the position embedding of
its 24×24 grid resized to the input's); DPT reassembles the first two stages and blocks 8 and
11 (the class token projected into every patch) at 1/4 to 1/32, fuses them coarse to fine,
and a head makes inverse depth at the input's size. Parameter names are the file's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from huabu.engine.annotators.family import Family, Networks, tensor

_WIDTH, _HEADS, _DEPTH, _PATCH = 768, 12, 12, 16
_FEATURES = 256


def same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding (more on the bottom and right when uneven)."""
    height, width = x.shape[-2:]
    pad_h = max((math.ceil(height / stride) - 1) * stride + kernel - height, 0)
    pad_w = max((math.ceil(width / stride) - 1) * stride + kernel - width, 0)
    if pad_h or pad_w:
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=value)
    return x


class SameConv(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's "same" (statically where stride 1
    allows, else per input; timm's and gen-efficientnet's ``Conv2dSame``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        static = stride == 1
        super().__init__(
            c_in,
            c_out,
            kernel,
            stride,
            padding=(kernel - 1) // 2 if static else 0,
            groups=groups,
            bias=False,
        )
        self.dynamic = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            x = same_pad(x, self.kernel_size[0], self.stride[0])
        return self._conv_forward(x, self.filters(), None)

    def filters(self) -> torch.Tensor:
        return self.weight


class _StdConv(SameConv):
    """A weight-standardised "same" convolution (each filter to zero mean, unit variance)."""

    def filters(self) -> torch.Tensor:
        flat = self.weight.reshape(1, self.out_channels, -1)
        weight = F.batch_norm(flat, None, None, training=True, momentum=0.0, eps=1e-8)
        return weight.reshape_as(self.weight)


class _GroupNormAct(nn.GroupNorm):
    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(32, channels, eps=1e-5)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return F.relu(x) if self.act else x


class _Downsample(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = _StdConv(c_in, c_out, 1, stride)
        self.norm = _GroupNormAct(c_out, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, first: bool) -> None:
        super().__init__()
        middle = c_out // 4
        self.downsample = _Downsample(c_in, c_out, stride) if first else None
        self.conv1, self.norm1 = _StdConv(c_in, middle, 1), _GroupNormAct(middle)
        self.conv2, self.norm2 = _StdConv(middle, middle, 3, stride), _GroupNormAct(middle)
        self.conv3, self.norm3 = _StdConv(middle, c_out, 1), _GroupNormAct(c_out, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class _Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, depth: int, stride: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                _Bottleneck(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, i == 0)
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class _Stem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _StdConv(3, 64, 7, 2)
        self.norm = _GroupNormAct(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.max_pool2d(same_pad(x, 3, 2, value=-math.inf), 3, 2)


class _ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _Stem()
        self.stages = nn.ModuleList(
            [_Stage(64, 256, 3, 1), _Stage(256, 512, 4, 2), _Stage(512, 1024, 9, 2)]
        )


class _PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _ResNet()
        self.proj = nn.Conv2d(1024, _WIDTH, 1)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(_WIDTH, 3 * _WIDTH)
        self.proj = nn.Linear(_WIDTH, _WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, _HEADS, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, _WIDTH))


class Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(_WIDTH, eps=1e-6)
        self.attn = _Attention()
        self.norm2 = nn.LayerNorm(_WIDTH, eps=1e-6)
        self.mlp = Mlp(_WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _Vit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, _WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + 24 * 24, _WIDTH))
        self.patch_embed = _PatchEmbed()
        self.blocks = nn.ModuleList([_Block() for _ in range(_DEPTH)])
        self.norm = nn.LayerNorm(_WIDTH, eps=1e-6)  # in the file; the hooks come before it

    def positions(self, rows: int, columns: int) -> torch.Tensor:
        token, grid = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        side = int(math.sqrt(len(grid)))
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, columns), mode="bilinear")
        return torch.cat([token, grid.permute(0, 2, 3, 1).reshape(1, rows * columns, -1)], 1)


class _Readout(nn.Module):
    """DPT's "project" readout: the class token joined to each patch, projected back."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x[:, 1:]
        token = x[:, :1].expand_as(patches)
        return self.project(torch.cat((patches, token), -1))


def reassemble(width: int, *convs: nn.Module) -> nn.Sequential:
    """Readout of ``width``-wide tokens, then (transpose and unflatten: done in ``forward``)
    the convolutions, at the indices the file has them."""
    return nn.Sequential(_Readout(width), nn.Identity(), nn.Identity(), *convs)


class _Pretrained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _Vit()
        self.act_postprocess3 = reassemble(_WIDTH, nn.Conv2d(_WIDTH, _WIDTH, 1))
        self.act_postprocess4 = reassemble(
            _WIDTH, nn.Conv2d(_WIDTH, _WIDTH, 1), nn.Conv2d(_WIDTH, _WIDTH, 3, 2, 1)
        )


class _ResidualUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(_FEATURES, _FEATURES, 3, padding=1)
        self.conv2 = nn.Conv2d(_FEATURES, _FEATURES, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class Fusion(nn.Module):
    """DPT's fusion: the finer level's features (``skip``) added through a residual unit,
    another, then upsampled: to ``size`` where given (MiDaS 3.1), else twice."""

    def __init__(self) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(_FEATURES, _FEATURES, 1)
        self.resConfUnit1 = _ResidualUnit()
        self.resConfUnit2 = _ResidualUnit()

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, *, size: torch.Size | None = None
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        scale = {"size": size} if size is not None else {"scale_factor": 2}
        x = F.interpolate(x, **scale, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Interpolate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Scratch(nn.Module):
    """DPT's decoder: the four levels (of ``channels``) to 256 channels, their fusions, and
    the head that makes depth."""

    def __init__(self, channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        for index, level in enumerate(channels, start=1):
            setattr(self, f"layer{index}_rn", nn.Conv2d(level, _FEATURES, 3, padding=1, bias=False))
            setattr(self, f"refinenet{index}", Fusion())
        self.output_conv = nn.Sequential(
            nn.Conv2d(_FEATURES, _FEATURES // 2, 3, padding=1),
            _Interpolate(),
            nn.Conv2d(_FEATURES // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
            nn.ReLU(),
            nn.Identity(),
        )


class DptHybrid(nn.Module):
    """Inverse relative depth (larger: nearer) of images in −1…1, sides multiples of 32."""

    def __init__(self) -> None:
        super().__init__()
        self.pretrained = _Pretrained()
        self.scratch = Scratch((256, 512, _WIDTH, _WIDTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit, scratch = self.pretrained.model, self.scratch
        rows, columns = x.shape[2] // _PATCH, x.shape[3] // _PATCH
        features = vit.patch_embed.backbone.stem(x)
        layers = []
        for stage in vit.patch_embed.backbone.stages:
            features = stage(features)
            layers.append(features)
        tokens = vit.patch_embed.proj(features).flatten(2).transpose(1, 2)
        tokens = torch.cat((vit.cls_token.expand(len(x), -1, -1), tokens), 1)
        tokens = tokens + vit.positions(rows, columns)
        for index, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if index in (8, 11):
                post = (
                    self.pretrained.act_postprocess3
                    if index == 8
                    else (self.pretrained.act_postprocess4)
                )
                grid = post[0](tokens).transpose(1, 2).unflatten(2, (rows, columns))
                layers.append(post[3:](grid))
        first, second, third, fourth = (
            getattr(scratch, f"layer{i}_rn")(layer)
            for i, layer in enumerate((layers[0], layers[1], layers[3], layers[4]), start=1)
        )
        path = scratch.refinenet4(fourth)
        path = scratch.refinenet3(path, third)
        path = scratch.refinenet2(path, second)
        path = scratch.refinenet1(path, first)
        return scratch.output_conv(path)[:, 0]


#: Keys of the file that the depth map does not use: the classifier timm's ViT was made with.
UNUSED = ("pretrained.model.head.",)


FILE = "dpt_hybrid-midas-501f0c75.pt"


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """MiDaS's inverse depth, scaled so the nearest is white and the farthest black."""
    depth = networks.network(FILE)(tensor(pixels, networks.device) / 127.5 - 1.0)[0]
    depth = depth - depth.min()
    top = depth.max()
    return (depth / top * 255.0 if top > 0 else depth).cpu().numpy()


FAMILY = Family(
    needs={"depth_midas": (FILE,), "depth": (FILE,)},
    networks={FILE: DptHybrid},
    unused={FILE: UNUSED},
    draw=_draw,
)
