"""``depth_leres++``: LeReS's depth boosted as Miangoleh et al. do it ("Boosting Monocular
Depth Estimation Models to High-Resolution via Content-Adaptive Multi-Resolution Merging",
CVPR 2021), written anew after controlnet_aux's copy of thygate's depthmap script (MIT).

The picture's depth is estimated twice, at the network's receptive field (448²) and at the
largest resolution where every part still gets contextual cues (R₂₀, found from the image's
edges), and the merge network (:class:`.leres.MergeNet`) merges the two. Where the
picture is at least R₂₀ across, patches dense in detail are then estimated the same way,
merged into the whole estimate and blended in under a Gaussian mask, largest first.

Two of the reference's quirks are kept, because they make the maps that sd-webui-controlnet
makes: its ``cv2.resize(img, size, cv2.INTER_AREA)`` passes the flag as the output array,
so those resizes are bilinear; and its pictures too small for the resolution search (under
160 px), where the reference fails, are estimated at the receptive field.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np
import torch
from torch import nn

#: Depth at a size: (RGB picture, width, height) → depth at the picture's own size.
Estimate = Callable[[np.ndarray, int, int], np.ndarray]

#: LeReS's receptive field, and the side of the merge network's inputs.
RECEPTIVE_FIELD = 448
MERGE_SIZE = 1024
#: The largest resolution the whole picture is estimated at (the paper's R_max).
R_MAX = 1600
#: The resolution search runs at 1/32 of the sizes it tries.
_SPEED = 32


def boost(rgb: np.ndarray, estimate: Estimate, merger: nn.Module, max_res: int) -> np.ndarray:
    """The boosted depth of ``rgb`` (H×W×3 uint8), at its size. ``max_res``: the largest
    side the result may need detail for (sd-webui-controlnet passes the picture's)."""
    height, width = rgb.shape[:2]
    whole_size, patch_scale = _processing_resolution(rgb, RECEPTIVE_FIELD, 0.2, 3, R_MAX)
    whole = _double(rgb, estimate, merger, RECEPTIVE_FIELD, whole_size)
    if max_res < whole_size:  # local boosting would not add detail at this size
        return cv2.resize(whole, (width, height), interpolation=cv2.INTER_CUBIC)
    # The target resolution: twice R₂₀ on the longer side, enlarged so small dense regions
    # still make patches.
    factor = max(min(1.0, 4 * patch_scale * whole_size / R_MAX), 0.2)
    if height > width:
        a, b = 2 * whole_size, round(2 * whole_size * width / height)
    else:
        a, b = round(2 * whole_size * height / width), 2 * whole_size
    target = cv2.resize(
        rgb, (int(round(b / factor)), int(round(a / factor))), interpolation=cv2.INTER_CUBIC
    )
    patches = _patches(target, 2 * RECEPTIVE_FIELD, factor)
    # Patches are merged at the picture's own resolution.
    scale = height / target.shape[0]
    size = (round(target.shape[1] * scale), round(target.shape[0] * scale))
    pixels = cv2.resize(target, size, interpolation=cv2.INTER_CUBIC)
    base = cv2.resize(whole, size, interpolation=cv2.INTER_CUBIC)
    updated = base.copy()
    for rect in patches:
        x, y, w, h = np.round(np.array(rect) * scale).astype(int)
        patch_base = base[y : y + h, x : x + w]
        patch = _double(
            pixels[y : y + h, x : x + w], estimate, merger, RECEPTIVE_FIELD, 2 * RECEPTIVE_FIELD
        )
        patch_base_sized = cv2.resize(
            patch_base, (MERGE_SIZE, MERGE_SIZE), interpolation=cv2.INTER_CUBIC
        )
        mapped = (_merge(merger, patch_base_sized, patch) + 1) / 2
        # A line fitted so the merged patch keeps the whole estimate's values.
        fit = np.polyfit(mapped.reshape(-1), patch_base_sized.reshape(-1), deg=1)
        merged = np.polyval(fit, mapped.reshape(-1)).reshape(mapped.shape)
        merged = cv2.resize(
            merged, (patch_base.shape[1], patch_base.shape[0]), interpolation=cv2.INTER_CUBIC
        )
        mask = cv2.resize(
            _blend_mask(),
            (patch_base.shape[1], patch_base.shape[0]),
            interpolation=cv2.INTER_LINEAR,
        )
        region = updated[y : y + h, x : x + w]
        updated[y : y + h, x : x + w] = region * (1 - mask) + merged * mask
    return cv2.resize(updated, (width, height), interpolation=cv2.INTER_CUBIC)


def _merge(merger: nn.Module, outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The merge network's output (−1…1) for two depth maps, each scaled to −1…1."""
    device = next(merger.parameters()).device
    maps = [torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)) for m in (outer, inner)]
    maps = [(m - m.min()) / (m.max() - m.min()) * 2 - 1 for m in maps]
    with torch.inference_mode():
        merged = merger(torch.stack(maps)[None].to(device))
    return merged[0, 0].float().cpu().numpy()


def _double(
    rgb: np.ndarray, estimate: Estimate, merger: nn.Module, low: int, high: int
) -> np.ndarray:
    """The paper's double estimation: the depth at ``low``² and at ``high``², merged; 0…1
    at the merge network's size."""
    maps = [
        cv2.resize(
            estimate(rgb, size, size), (MERGE_SIZE, MERGE_SIZE), interpolation=cv2.INTER_CUBIC
        )
        for size in (low, high)
    ]
    merged = (_merge(merger, *maps) + 1) / 2
    return (merged - merged.min()) / (merged.max() - merged.min())


def _gradients(rgb: np.ndarray) -> np.ndarray:
    gray = np.dot(rgb[..., :3], [0.2989, 0.5870, 0.1140])
    return np.abs(cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)) + np.abs(
        cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3)
    )


def _max_pool(image: np.ndarray, size: int) -> np.ndarray:
    """skimage's ``block_reduce(image, (n, n), np.max)`` for n = side // size (the edges
    padded with zeros to whole blocks)."""
    n = image.shape[0] // size
    rows, cols = -(-image.shape[0] // n) * n, -(-image.shape[1] // n) * n
    padded = np.zeros((rows, cols), image.dtype)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded.reshape(rows // n, n, cols // n, n).max(axis=(1, 3))


def _processing_resolution(
    rgb: np.ndarray, base: int, confidence: float, upscale: int, largest: int
) -> tuple[int, float]:
    """The paper's R_x (section 5): the largest resolution, in steps of half the receptive
    field, at which at most ``confidence`` of the picture is farther than the receptive field
    from an edge; and the edge density that sets the patches' scale (section 6)."""
    side = int(min(rgb.shape[:2]))
    grad = cv2.resize(_gradients(rgb), (side, side))  # bilinear, as the reference's is
    middle = grad.min() + 0.4 * (grad.max() - grad.min())
    grad = (grad >= middle).astype(np.float64)
    kernel = np.ones((base // _SPEED, base // _SPEED))
    threshold = min(largest, upscale * max(rgb.shape[:2]))
    found = base // _SPEED
    edges = _binary(grad, found)  # the reference has none if the loop never runs
    for size in range(base // _SPEED, int(threshold / _SPEED), base // (2 * _SPEED)):
        edges = _binary(grad, size)
        if (1 - cv2.dilate(edges, kernel, iterations=1)).mean() > confidence:
            break
        found = size
    region = cv2.dilate(edges, np.ones((base // (4 * _SPEED),) * 2), iterations=1)
    return found * _SPEED, float(region.mean())


def _binary(grad: np.ndarray, size: int) -> np.ndarray:
    pooled = cv2.resize(_max_pool(grad, size), (size, size))  # bilinear, as the reference's
    return (pooled >= 0.5).astype(np.float64)


def _patches(rgb: np.ndarray, size: int, factor: float) -> list[list[int]]:
    """Section 6's patches ([x, y, w, h], largest first): a grid of ``size``² patches at
    ¾-size strides, those denser in edges than the whole picture kept, each grown while it
    stays so."""
    grad = _gradients(rgb)
    edges = grad[grad > 0]
    if edges.size:  # (a flat picture has none: every patch is as dense as the whole)
        grad[grad < edges.mean()] = 0
    density = grad.sum() / grad.size
    integral = cv2.integral(grad)
    half = round(size / 2)
    stride = round(half * 0.75)
    step = int(32 / factor)
    chosen = []
    for x in range(half, rgb.shape[1] - half, stride):
        for y in range(half, rgb.shape[0] - half, stride):
            box = [x - half, y - half, 2 * half, 2 * half]
            if _density(integral, box) < density:
                continue
            while True:
                grown = [box[0] - step // 2, box[1] - step // 2, box[2] + step, box[3] + step]
                if (
                    grown[0] < 0
                    or grown[1] < 0
                    or grown[1] + grown[3] >= integral.shape[0]
                    or grown[0] + grown[2] >= integral.shape[1]
                ):
                    break
                if _density(integral, grown) < density:
                    break
                box = grown
            chosen.append(box)
    return sorted(chosen, key=lambda box: box[2], reverse=True)


def _density(integral: np.ndarray, box: list[int]) -> float:
    x, y, w, h = box
    total = integral[y + h, x + w] - integral[y, x + w] - integral[y + h, x] + integral[y, x]
    return total / (w * h)


@functools.cache
def _blend_mask() -> np.ndarray:
    """The patches' blending mask: 1 inside a 15 % margin, blurred to 0 at the edges
    (made once, large, and resized per patch, as the reference does)."""
    side = 3000
    mask = np.zeros((side, side), dtype=np.float32)
    margin = int(0.15 * side)
    mask[margin : side - margin, margin : side - margin] = 1
    sigma = side // 16
    kernel = int(2 * np.ceil(2 * sigma) + 1)
    mask = cv2.GaussianBlur(mask, (kernel, kernel), sigma)
    return ((mask - mask.min()) / (mask.max() - mask.min())).astype(np.float32)
