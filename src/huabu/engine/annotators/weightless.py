"""The preprocessors without weights: ``none`` uses the image as the control map; ``canny``,
``shuffle`` and ``lineart_standard`` are controlnet_aux's weightless detectors, re-implemented
on OpenCV (controlnet_aux itself pulls a CUDA torch and torchvision). They see the image at its
own size."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from huabu.catalog.preprocessors import check


def _noise_disk(height: int, width: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 1, size=(height // scale + 2, width // scale + 2))
    noise = cv2.resize(
        noise, (width + 2 * scale, height + 2 * scale), interpolation=cv2.INTER_CUBIC
    )
    noise = noise[scale : scale + height, scale : scale + width]
    noise -= noise.min()
    return noise / max(noise.max(), 1e-8)


def run(name: str, image: Image.Image, *, seed: int = 0) -> Image.Image:
    """The control map of ``image`` (an unknown name is refused, naming ``preprocessor``)."""
    pixels = np.asarray(image.convert("RGB"))
    if name == "none":
        return image.convert("RGB")
    if name == "canny":
        edges = cv2.Canny(pixels, 100, 200)
        return Image.fromarray(np.stack([edges] * 3, axis=2))
    if name == "shuffle":  # controlnet_aux's ContentShuffleDetector, seeded
        height, width = pixels.shape[:2]
        rng = np.random.default_rng(seed)
        flow_x = _noise_disk(height, width, 256, rng) * (width - 1)
        flow_y = _noise_disk(height, width, 256, rng) * (height - 1)
        shuffled = cv2.remap(
            pixels, flow_x.astype(np.float32), flow_y.astype(np.float32), cv2.INTER_LINEAR
        )
        return Image.fromarray(shuffled)
    if name == "lineart_standard":  # controlnet_aux's LineartStandardDetector
        x = pixels.astype(np.float32)
        blurred = cv2.GaussianBlur(x, (0, 0), 6.0)
        intensity = np.min(blurred - x, axis=2).clip(0, 255)
        strong = intensity[intensity > 8]
        intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
        lines = (intensity * 127).clip(0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([lines] * 3, axis=2))
    check(name, set(), param="preprocessor")
    raise AssertionError("unreachable")
