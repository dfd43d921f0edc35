"""ZoeDepth (Bhat et al., "ZoeDepth: Zero-shot Transfer by Combining Relative and Metric
Depth"), the ``depth_zoe`` preprocessor: ``ZoeD_M12_N.pt``, written anew in plain torch after
controlnet_aux's copy of ZoeDepth (MIT) and MiDaS 3.1 (MIT) on timm's BEiT (Apache-2.0): timm
cannot be installed here (it imports torchvision).

The network: MiDaS 3.1's DPT on a BEiT-L/16 (24 blocks, each attention with a relative
position bias, its 47×47 table resized to the input's grid), whose blocks 5, 11, 17 and 23
DPT reassembles at 1/4 … 1/32 and fuses coarse to fine into relative depth. ZoeDepth's metric
head reads the fused features: 64 depth bins, regressed at the coarsest level and moved by
attractors at each finer one, and a per-pixel log-binomial distribution over them whose
expectation is the metric depth. Parameter names are the file's (under its ``model`` entry).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from huabu.engine.annotators.family import Family, Networks, tensor
from huabu.engine.annotators.midas import Mlp, Scratch, reassemble

_WIDTH, _HEADS, _DEPTH, _PATCH = 1024, 16, 24, 16
#: The grid BEiT-L/384's relative position tables were trained for.
_WINDOW = 384 // _PATCH
#: The blocks DPT reassembles.
_HOOKS = (5, 11, 17, 23)
_FEATURES, _BINS, _EMBEDDING = 256, 64, 128
#: The size ZoeDepth resizes its input towards (height, width), keeping the aspect ratio.
_NET_SIZE = (384, 512)


@lru_cache(maxsize=8)
def relative_index(rows: int, columns: int, device: torch.device | None = None) -> torch.Tensor:
    """timm's ``gen_relative_position_index``: for each pair of tokens (the class token first),
    its row in the relative position table; the last three rows are the class token's. Kept
    per grid and device: every block of every pass looks it up."""
    coords = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(columns), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative[:, :, 0] += rows - 1
    relative[:, :, 1] += columns - 1
    relative[:, :, 0] *= 2 * columns - 1
    distances = (2 * rows - 1) * (2 * columns - 1) + 3
    index = torch.zeros((rows * columns + 1,) * 2, dtype=torch.long)
    index[1:, 1:] = relative.sum(-1)
    index[0, 0:] = distances - 3
    index[0:, 0] = distances - 2
    index[0, 0] = distances - 1
    return index.to(device) if device is not None else index


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(_WIDTH, 3 * _WIDTH, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(_WIDTH))
        self.v_bias = nn.Parameter(torch.zeros(_WIDTH))
        side = 2 * _WINDOW - 1
        self.relative_position_bias_table = nn.Parameter(torch.zeros(side * side + 3, _HEADS))
        self.proj = nn.Linear(_WIDTH, _WIDTH)

    def position_bias(self, rows: int, columns: int) -> torch.Tensor:
        """The table's grid part resized (bilinearly) to a ``rows``×``columns`` grid, as
        MiDaS 3.1 does for sizes other than 384², looked up for every pair of tokens."""
        table, side = self.relative_position_bias_table, 2 * _WINDOW - 1
        grid = table[: side * side].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(2 * rows - 1, 2 * columns - 1), mode="bilinear")
        table = torch.cat([grid.permute(0, 2, 3, 1).reshape(-1, _HEADS), table[side * side :]])
        tokens = rows * columns + 1
        index = relative_index(rows, columns, table.device).view(-1)
        return table[index].view(tokens, tokens, -1).permute(2, 0, 1)[None]

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        q, k, v = qkv.reshape(batch, tokens, 3, _HEADS, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, _WIDTH))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(_WIDTH, eps=1e-6)
        self.attn = _Attention()
        self.norm2 = nn.LayerNorm(_WIDTH, eps=1e-6)
        self.mlp = Mlp(_WIDTH)
        self.gamma_1 = nn.Parameter(torch.ones(_WIDTH))  # layer scales
        self.gamma_2 = nn.Parameter(torch.ones(_WIDTH))

    def forward(self, x: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), self.attn.position_bias(rows, columns))
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, _WIDTH, _PATCH, _PATCH)


class _Beit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, _WIDTH))
        self.patch_embed = _PatchEmbed()
        self.blocks = nn.ModuleList([_Block() for _ in range(_DEPTH)])


class _Pretrained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = _Beit()
        self.act_postprocess1 = reassemble(
            _WIDTH, nn.Conv2d(_WIDTH, 256, 1), nn.ConvTranspose2d(256, 256, 4, 4)
        )
        self.act_postprocess2 = reassemble(
            _WIDTH, nn.Conv2d(_WIDTH, 512, 1), nn.ConvTranspose2d(512, 512, 2, 2)
        )
        self.act_postprocess3 = reassemble(_WIDTH, nn.Conv2d(_WIDTH, _WIDTH, 1))
        self.act_postprocess4 = reassemble(
            _WIDTH, nn.Conv2d(_WIDTH, _WIDTH, 1), nn.Conv2d(_WIDTH, _WIDTH, 3, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four reassembled feature maps, 1/4 … 1/32 of ``x``."""
        rows, columns = x.shape[2] // _PATCH, x.shape[3] // _PATCH
        tokens = self.model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat((self.model.cls_token.expand(len(x), -1, -1), tokens), 1)
        layers: list[torch.Tensor] = []
        for index, block in enumerate(self.model.blocks):
            tokens = block(tokens, rows, columns)
            if index in _HOOKS:
                post = getattr(self, f"act_postprocess{len(layers) + 1}")
                grid = post[0](tokens).transpose(1, 2).unflatten(2, (rows, columns))
                layers.append(post[3:](grid))
        return layers


class _Dpt(nn.Module):
    """MiDaS 3.1's DPT_BEiT_L_384: relative inverse depth, and the features ZoeDepth reads."""

    def __init__(self) -> None:
        super().__init__()
        self.pretrained = _Pretrained()
        self.scratch = Scratch((256, 512, _WIDTH, _WIDTH))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Relative depth at ``x``'s size, and (as ZoeDepth's hooks take them) the head's
        32-channel activation, the coarsest reassembled map and the four fusions' outputs."""
        scratch = self.scratch
        first, second, third, fourth = (
            getattr(scratch, f"layer{i}_rn")(level)
            for i, level in enumerate(self.pretrained(x), start=1)
        )
        path4 = scratch.refinenet4(fourth, size=third.shape[2:])
        path3 = scratch.refinenet3(path4, third, size=second.shape[2:])
        path2 = scratch.refinenet2(path3, second, size=first.shape[2:])
        path1 = scratch.refinenet1(path2, first)
        activation = scratch.output_conv[:4](path1)
        depth = scratch.output_conv[4:](activation)[:, 0]
        return depth, [activation, fourth, path4, path3, path2, path1]


class _Core(nn.Module):
    """ZoeDepth's ``MidasCore``: the DPT, fed ``x`` resized towards 384×512 and in −1…1."""

    def __init__(self) -> None:
        super().__init__()
        self.core = _Dpt()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = F.interpolate(x, net_size(*x.shape[2:]), mode="bilinear", align_corners=True)
        return self.core((x - 0.5) / 0.5)


def net_size(height: int, width: int) -> tuple[int, int]:
    """MiDaS's "minimal" resize towards 384×512: one scale for both sides, the one closer to
    1, then each side rounded (half to even) to a multiple of 32."""
    scale_height, scale_width = _NET_SIZE[0] / height, _NET_SIZE[1] / width
    scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height
    return (int(np.round(scale * height / 32) * 32), int(np.round(scale * width / 32) * 32))


def _two_convs(c_in: int, hidden: int, c_out: int, last: nn.Module | None) -> nn.Sequential:
    """Two 1×1 convolutions with a ReLU between: the ``_net`` of ZoeDepth's small heads."""
    layers = [nn.Conv2d(c_in, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c_out, 1)]
    return nn.Sequential(*layers, *([last] if last else []))


class _Mlp2(nn.Module):
    def __init__(self, c_in: int, hidden: int, c_out: int, last: nn.Module | None) -> None:
        super().__init__()
        self._net = _two_convs(c_in, hidden, c_out, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


def _resized(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size, mode="bilinear", align_corners=True)


class _Attractor(nn.Module):
    """ZoeDepth's ``AttractorLayerUnnormed``, as its checkpoint was made: inverse attractors,
    their pulls averaged, at strength 300 (the layer's own ``alpha`` is never passed on)."""

    def __init__(self, attractors: int) -> None:
        super().__init__()
        self._net = _two_convs(_EMBEDDING, _EMBEDDING, attractors, nn.Softplus())

    def forward(
        self, x: torch.Tensor, centres: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        points = self._net(x + _resized(previous, x.shape[-2:]))
        centres = _resized(centres, points.shape[-2:])
        dx = points.unsqueeze(2) - centres.unsqueeze(1)
        return centres + (dx / (1 + 300 * dx.pow(2))).mean(dim=1)


class _LogBinomial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("k_idx", torch.arange(_BINS).view(1, -1, 1, 1))
        self.register_buffer("K_minus_1", torch.tensor([_BINS - 1.0]).view(1, -1, 1, 1))


class _ConditionalLogBinomial(nn.Module):
    """Per pixel, a binomial distribution over the bins (its probability and temperature
    made from the features), as a softmax of its logarithm."""

    def __init__(self, c_in: int, temperatures: tuple[float, float] = (0.0212, 50.0)) -> None:
        super().__init__()
        bottleneck = (c_in + _EMBEDDING) // 2
        self.mlp = nn.Sequential(
            nn.Conv2d(c_in + _EMBEDDING, bottleneck, 1),
            nn.GELU(),
            nn.Conv2d(bottleneck, 4, 1),
            nn.Softplus(),
        )
        self.log_binomial_transform = _LogBinomial()
        self.temperatures = temperatures

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        eps = 1e-4
        pt = self.mlp(torch.cat((x, condition), dim=1)) + eps
        p = (pt[:, 0] / (pt[:, 0] + pt[:, 1]))[:, None]
        low, high = self.temperatures
        t = (high - low) * (pt[:, 2] / (pt[:, 2] + pt[:, 3]))[:, None] + low
        k, n = self.log_binomial_transform.k_idx, self.log_binomial_transform.K_minus_1
        y = (
            _log_choose(n, k)
            + k * torch.log(p.clamp(eps, 1))
            + ((_BINS - 1 - k) * torch.log((1 - p).clamp(eps, 1)))
        )
        return torch.softmax(y / t, dim=1)


def _log_choose(n: torch.Tensor, k: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """log(n choose k) by Stirling's approximation, as ZoeDepth computes it."""
    n, k = n + eps, k + eps
    return n * torch.log(n) - k * torch.log(k) - (n - k) * torch.log(n - k + eps)


class ZoeDepth(nn.Module):
    """Metric depth (larger: farther) of images in 0…1, at the input's size."""

    def __init__(self) -> None:
        super().__init__()
        self.core = _Core()
        self.conv2 = nn.Conv2d(_FEATURES, _FEATURES, 1)
        self.seed_bin_regressor = _Mlp2(_FEATURES, 256, _BINS, nn.Softplus())
        self.seed_projector = _Mlp2(_FEATURES, 128, _EMBEDDING, None)
        self.projectors = nn.ModuleList([_Mlp2(_FEATURES, 128, _EMBEDDING, None) for _ in range(4)])
        self.attractors = nn.ModuleList([_Attractor(n) for n in (16, 8, 4, 1)])
        self.conditional_log_binomial = _ConditionalLogBinomial(32 + 1)

    def metric(self, x: torch.Tensor) -> torch.Tensor:
        """One pass: metric depth at the resized input's size."""
        relative, (last, bottleneck, *blocks) = self.core(x)
        x = self.conv2(bottleneck)
        centres, embedding = self.seed_bin_regressor(x), self.seed_projector(x)
        for projector, attractor, block in zip(
            self.projectors, self.attractors, blocks, strict=True
        ):
            previous, embedding = embedding, projector(block)
            centres = attractor(embedding, centres, previous)
        last = torch.cat([last, _resized(relative[:, None], last.shape[2:])], dim=1)
        probabilities = self.conditional_log_binomial(last, _resized(embedding, last.shape[-2:]))
        centres = _resized(centres, probabilities.shape[-2:])
        return (probabilities * centres).sum(dim=1, keepdim=True)

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        """Reflect-padded by about √(side/2)·3 (against the borders of its training pictures),
        estimated, resized back bicubically and cropped."""
        pad_h, pad_w = (int(np.sqrt(side / 2) * 3) for side in x.shape[2:])
        padded = F.pad(x, [pad_w, pad_w] + ([pad_h, pad_h] if pad_h > 0 else []), mode="reflect")
        out = self.metric(padded)
        if out.shape[-2:] != padded.shape[-2:]:
            out = F.interpolate(out, size=padded.shape[2:], mode="bicubic", align_corners=False)
        height, width = out.shape[2:]
        return out[:, :, pad_h : height - pad_h, pad_w : width - pad_w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ZoeDepth's ``infer``: the padded estimate averaged with that of the mirror image."""
        flipped = self._padded(x.flip(3)).flip(3)
        return (self._padded(x) + flipped) / 2


#: Keys of the file that the depth map does not use: BEiT's classifier.
UNUSED = ("core.core.pretrained.model.head.", "core.core.pretrained.model.fc_norm.")
#: Key endings of buffers a file may hold that are computed here instead: each block's
#: relative position index (timm 0.6 saved it; it depends on the input's size) and the
#: attention's key bias (always zero).
RECOMPUTED = (".relative_position_index", ".k_bias")


FILE = "ZoeD_M12_N.pt"


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """ZoeDepth's metric depth, scaled as sd-webui-controlnet does: its 2nd percentile white,
    its 85th black (farther is darker, and the farthest 15 % all black)."""
    x = tensor(pixels, networks.device) / 255.0
    depth = networks.network(FILE)(x)[0, 0].float().cpu().numpy()
    near, far = np.percentile(depth, 2), np.percentile(depth, 85)
    if far - near <= np.finfo(np.float32).eps:  # a flat estimate: no depth to show
        return np.zeros_like(depth)
    return (1.0 - (depth - near) / (far - near)) * 255.0


FAMILY = Family(
    needs={"depth_zoe": (FILE,)},
    networks={FILE: ZoeDepth},
    unused={FILE: UNUSED},
    recomputed={FILE: RECOMPUTED},
    draw=_draw,
)
