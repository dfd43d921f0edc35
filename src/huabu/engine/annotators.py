"""ControlNet preprocessors that run a network (annotators), on weights the operator puts in
``$HUABU_HOME/models/annotators/`` under the names of lllyasviel/Annotators, the files that
A1111's sd-webui-controlnet and ComfyUI's controlnet_aux download.

The networks and their pre- and post-processing are ported from controlnet_aux 0.0.10
(Apache-2.0): HED is lllyasviel's Apache-2.0 ``ControlNetHED_Apache2``; the lineart generators
are informative-drawings' (MIT); PiDiNet is :mod:`huabu.engine.pidinet`. OpenPose
(:mod:`huabu.engine.openpose`) is written anew (its published code is non-commercial), and so
is MiDaS (:mod:`huabu.engine.midas`, whose original needs timm), Bae's normals
(:mod:`huabu.engine.normal_bae`), LeReS (:mod:`huabu.engine.leres`) and ZoeDepth
(:mod:`huabu.engine.zoe`). Each gives the same
outputs as controlnet_aux's module on the same weights (checked when written).
controlnet_aux itself cannot be imported here (its package imports torchvision and timm).
Weights load with ``torch.load(weights_only=True)``: the ``.pth`` files are plain state
dicts, and no code in them runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from huabu.catalog.preprocessors import NETWORKS
from huabu.engine import leres_boost, midas, normal_bae, openpose, zoe
from huabu.engine.dwpose import DwPose
from huabu.engine.leres import Leres, MergeNet
from huabu.engine.lineart_anime import AnimeLineart
from huabu.engine.midas import DptHybrid
from huabu.engine.mlsd import Mlsd, draw
from huabu.engine.normal_bae import NormalBae
from huabu.engine.pidinet import PiDiNet
from huabu.engine.zoe import ZoeDepth
from huabu.errors import ModelUnavailable

#: Loaded networks kept per worker process; the least recently used beyond this are dropped.
MAX_LOADED = 3
#: The side the detectors see (A1111's default "processor resolution"), or the output's
#: shorter side when that is smaller.
DETECT_RESOLUTION = 512


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
        for index, block in enumerate((self.block1, self.block2, self.block3, self.block4,
                                       self.block5)):  # fmt: skip
            h, projection = block(h, down=index > 0)
            projections.append(projection)
        return projections


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """``sk_model.pth`` (realistic) and ``sk_model2.pth`` (coarse): informative-drawings'
    generator, 3 residual blocks."""

    def __init__(self, residual_blocks: int = 3) -> None:
        super().__init__()
        norm = nn.InstanceNorm2d
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), norm(64),
                                    nn.ReLU(inplace=True))  # fmt: skip
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), norm(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), norm(256), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.model2 = nn.Sequential(*[_Residual(256) for _ in range(residual_blocks)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), norm(128),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), norm(64),
            nn.ReLU(inplace=True),
        )  # fmt: skip
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


#: The network class of each annotator file.
_CLASSES: dict[str, Callable[[], nn.Module]] = {
    "ControlNetHED.pth": Hed,
    "sk_model.pth": LineartGenerator,
    "sk_model2.pth": LineartGenerator,
    "table5_pidinet.pth": PiDiNet,
    "netG.pth": AnimeLineart,
    "mlsd_large_512_fp32.pth": Mlsd,
    "body_pose_model.pth": openpose.BodyNet,
    "hand_pose_model.pth": openpose.hand_net,
    "facenet.pth": openpose.face_net,
    "dpt_hybrid-midas-501f0c75.pt": DptHybrid,
    "scannet.pt": NormalBae,
    "res101.pth": Leres,
    "latest_net_G.pth": MergeNet,
    "ZoeD_M12_N.pt": ZoeDepth,
}
#: Keys a file may hold that its network does not use (dropped before a strict load).
_UNUSED = {
    "dpt_hybrid-midas-501f0c75.pt": midas.UNUSED,
    "scannet.pt": normal_bae.UNUSED,
    "ZoeD_M12_N.pt": zoe.UNUSED,
}
#: Key endings of buffers a file may hold that its network computes itself (dropped too).
_RECOMPUTED = {"ZoeD_M12_N.pt": zoe.RECOMPUTED}


class Annotators:
    """The annotator networks of one worker process, loaded on first use from the files
    ``locate`` finds (a file name → its path, or ModelUnavailable), at most ``MAX_LOADED``."""

    def __init__(self, locate: Callable[[str], Path], device: torch.device) -> None:
        self.locate = locate
        self.device = device
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def network(self, file_name: str) -> nn.Module:
        return self._cached(file_name, lambda: self._load(file_name))

    def dwpose(self) -> DwPose:
        """DWPose's two ONNX sessions, cached as one network."""
        detector, pose = NETWORKS["dwpose"]
        return self._cached(
            "dwpose",
            lambda: DwPose(self.locate(detector), self.locate(pose),
                           cuda=self.device.type == "cuda", threads=torch.get_num_threads()),
        )  # fmt: skip

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
                while len(self._loaded) > MAX_LOADED:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return self._loaded[key]

    def _load(self, file_name: str) -> nn.Module:
        path = self.locate(file_name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state)  # PiDiNet's is a training checkpoint
            for entry in ("model", "depth_model"):  # so are MiDaS's, Bae's, LeReS's, Zoe's
                if isinstance(state.get(entry), dict):
                    state = state[entry]
            unused, recomputed = _UNUSED.get(file_name, ()), _RECOMPUTED.get(file_name, ())
            state = {k.removeprefix("module."): v for k, v in state.items()}
            state = {k: v for k, v in state.items()
                     if not k.startswith(unused) and not k.endswith(recomputed)}  # fmt: skip
            with torch.device("meta"):  # no random initialisation: the file has every weight
                network = _CLASSES[file_name]()
            network.load_state_dict(state, assign=True)
        except (OSError, RuntimeError, ValueError, KeyError, AttributeError) as exc:
            raise ModelUnavailable(
                f"annotator file models/annotators/{file_name} is damaged or not the network "
                "it is named for"
            ) from exc
        return network.to(self.device, torch.float32).eval()

    def run(self, name: str, image: Image.Image) -> Image.Image:
        """Preprocessor ``name``'s control map of ``image``, at ``image``'s size."""
        file_name, *more = NETWORKS[name]
        width, height = image.size
        pixels = detect_size(np.asarray(image.convert("RGB")), min(width, height))
        if file_name in ("body_pose_model.pth", "yolox_l.onnx"):
            pose = self._pose(name, pixels, more)
            return Image.fromarray(
                cv2.resize(pose, (width, height), interpolation=cv2.INTER_LINEAR)
            )
        network = self.network(file_name)
        with torch.inference_mode():
            x = torch.from_numpy(pixels.copy()).float().permute(2, 0, 1)[None].to(self.device)
            if file_name == "scannet.pt":  # a colour map: the normals' x, y, z as R, G, B
                normals = _normals(network, x)
                return Image.fromarray(
                    cv2.resize(normals, (width, height), interpolation=cv2.INTER_LINEAR)
                )
            if file_name == "ControlNetHED.pth":
                edges = _hed(network, x, pixels.shape[:2], safe=name.endswith("safe"))
            elif file_name == "mlsd_large_512_fp32.pth":
                edges = draw(network, pixels)
            elif file_name == "netG.pth":
                edges = _anime(network, pixels)
            elif file_name == "dpt_hybrid-midas-501f0c75.pt":
                edges = _depth(network, x)
            elif file_name == "ZoeD_M12_N.pt":
                edges = _zoe(network, x)
            elif file_name == "res101.pth":  # depth_leres++ boosts it with the merge network
                merger = self.network("latest_net_G.pth") if more else None
                edges = _leres(network, pixels, merger)
            elif file_name == "table5_pidinet.pth":  # BGR in, as PiDiNet was trained
                edge = network(x.flip(1) / 255.0)[0, 0].cpu().numpy()
                edges = (_safe(edge) if name.endswith("safe") else edge) * 255.0
            else:  # the lineart generators draw dark lines on white: inverted, as A1111 does
                edges = 255 - (network(x / 255.0)[0, 0].cpu().numpy() * 255.0).clip(0, 255)
        edges = edges.clip(0, 255).astype(np.uint8)
        edges = cv2.resize(edges, (width, height), interpolation=cv2.INTER_LINEAR)
        if name.startswith("scribble"):
            edges = _scribble(edges)
        return Image.fromarray(np.stack([edges] * 3, axis=2))

    def _pose(self, name: str, pixels: np.ndarray, more: list[str]) -> np.ndarray:
        """The OpenPose map: the body network, and the hand and face ones where ``name``
        draws them (``openpose_faceonly`` finds the face from the body but draws only it);
        DWPose finds everything at once."""
        height, width = pixels.shape[:2]
        if name == "dwpose":
            people = self.dwpose().detect(pixels)
            return openpose.draw(people, width, height, hands=True, face=True)
        body = self.network("body_pose_model.pth")
        hand = self.network("hand_pose_model.pth") if "hand_pose_model.pth" in more else None
        face = self.network("facenet.pth") if "facenet.pth" in more else None
        with torch.inference_mode():
            people = openpose.detect(pixels, body, hand, face)
        return openpose.draw(people, width, height, body=name != "openpose_faceonly",
                             hands=hand is not None, face=face is not None)  # fmt: skip


def detect_size(pixels: np.ndarray, shorter: int) -> np.ndarray:
    """controlnet_aux's ``resize_image``: the shorter side at the detect resolution, both
    sides rounded to multiples of 64."""
    resolution = min(DETECT_RESOLUTION, shorter)
    height, width = pixels.shape[:2]
    k = resolution / min(height, width)
    size = (max(64, round(width * k / 64) * 64), max(64, round(height * k / 64) * 64))
    interpolation = cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA
    return cv2.resize(pixels, size, interpolation=interpolation)


def _hed(network: nn.Module, x: torch.Tensor, size: tuple[int, int], *, safe: bool) -> np.ndarray:
    height, width = size
    maps = [cv2.resize(p[0, 0].float().cpu().numpy(), (width, height),
                       interpolation=cv2.INTER_LINEAR) for p in network(x)]  # fmt: skip
    edge = 1 / (1 + np.exp(-np.mean(np.stack(maps, axis=2), axis=2).astype(np.float64)))
    return (_safe(edge) if safe else edge) * 255.0


def _anime(network: nn.Module, pixels: np.ndarray) -> np.ndarray:
    """The anime lineart: its U-Net takes sides in multiples of 256 and −1…1, and draws light
    lines on dark (inverted, as A1111 does)."""
    height, width = pixels.shape[:2]
    size = (256 * -(-width // 256), 256 * -(-height // 256))
    resized = cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC)
    device = next(network.parameters()).device
    x = torch.from_numpy(resized).float().permute(2, 0, 1)[None].to(device) / 127.5 - 1.0
    line = (network(x)[0, 0] * 127.5 + 127.5).cpu().numpy()
    line = cv2.resize(line, (width, height), interpolation=cv2.INTER_CUBIC)
    return 255 - line.clip(0, 255)


#: ImageNet's mean and deviation (what the normals and LeReS networks were trained on).
_IMAGENET = (torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))


def _imagenet(x: torch.Tensor, scale: float = 1 / 255) -> torch.Tensor:
    """0…255 pixels normalised with ImageNet's mean and deviation (per channel, in order),
    after scaling by ``scale``."""
    mean, std = (t.to(x.device)[None, :, None, None] for t in _IMAGENET)
    return (x * scale - mean) / std


def _normals(network: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Bae's surface normals, −1…1 per axis mapped to 0…255."""
    normal = network(_imagenet(x))[0, :3]
    normal = ((normal + 1) * 0.5).clip(0, 1).permute(1, 2, 0).cpu().numpy()
    return (normal * 255.0).clip(0, 255).astype(np.uint8)


def _leres(network: nn.Module, pixels: np.ndarray, merger: nn.Module | None) -> np.ndarray:
    """LeReS's depth, boosted where ``merger`` is given (depth_leres++), scaled through 16 bits
    as controlnet_aux does, and inverted: near is white."""
    device = next(network.parameters()).device

    def estimate(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
        bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (width, height))
        x = torch.from_numpy(bgr).float().permute(2, 0, 1)[None].to(device)
        # Normalised from 0…255, not 0…1, as sd-webui-controlnet and controlnet_aux feed it
        # (their ToTensor is handed float32 pixels, which it does not scale).
        depth = network(_imagenet(x, scale=1.0))[0].float().cpu().numpy()
        return cv2.resize(depth, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_CUBIC)

    height, width = pixels.shape[:2]
    if merger is None:
        depth = estimate(pixels, width, height)
    else:
        depth = leres_boost.boost(pixels, estimate, merger, max(width, height))
    depth = depth.astype(np.float64)
    low, high = depth.min(), depth.max()
    if high - low > np.finfo("float").eps:
        depth = (65535 * (depth - low) / (high - low)).astype(np.uint16)
    else:
        depth = np.zeros(depth.shape, dtype=np.uint16)
    return 255.0 - cv2.convertScaleAbs(depth, alpha=255.0 / 65535.0)


def _depth(network: nn.Module, x: torch.Tensor) -> np.ndarray:
    """MiDaS's inverse depth, scaled so the nearest is white and the farthest black."""
    depth = network(x / 127.5 - 1.0)[0]
    depth = depth - depth.min()
    top = depth.max()
    return (depth / top * 255.0 if top > 0 else depth).cpu().numpy()


def _zoe(network: nn.Module, x: torch.Tensor) -> np.ndarray:
    """ZoeDepth's metric depth, scaled as sd-webui-controlnet does: its 2nd percentile white,
    its 85th black (farther is darker, and the farthest 15 % all black)."""
    depth = network(x / 255.0)[0, 0].float().cpu().numpy()
    near, far = np.percentile(depth, 2), np.percentile(depth, 85)
    if far - near <= np.finfo(np.float32).eps:  # a flat estimate: no depth to show
        return np.zeros_like(depth)
    return (1.0 - (depth - near) / (far - near)) * 255.0


def _safe(edge: np.ndarray) -> np.ndarray:
    """controlnet_aux's "safe step": quantised to 3 levels, so fewer hidden details leak."""
    return (edge * 3.0).astype(np.int32).astype(np.float32) / 2.0


def _scribble(edges: np.ndarray) -> np.ndarray:
    """controlnet_aux's scribble post-processing: thin (non-maximum suppression), blur, then
    every touched pixel white."""
    blurred = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), 3.0)
    kernels = [np.array(k, dtype=np.uint8) for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]  # fmt: skip
    thin = np.zeros_like(blurred)
    for kernel in kernels:
        np.putmask(thin, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    lines = np.where(thin > 127, 255, 0).astype(np.uint8)
    lines = cv2.GaussianBlur(lines, (0, 0), 3.0)
    return np.where(lines > 4, 255, 0).astype(np.uint8)
