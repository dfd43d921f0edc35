"""ControlNet preprocessors: the control map of an input image.

``none`` uses the image as the control map; ``canny``, ``shuffle`` and ``lineart_standard``
are the weightless detectors of controlnet_aux, re-implemented on OpenCV (controlnet_aux itself
pulls a CUDA torch and torchvision); ``mediapipe_face`` runs the ``mediapipe`` package's own
face mesh. The ones that run a network from ``models/annotators/`` are
:mod:`huabu.engine.annotators`.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from huabu.catalog.preprocessors import NETWORKS, PACKAGES, check
from huabu.engine import mediapipe_face
from huabu.engine.annotators import Annotators, detect_size


def _noise_disk(height: int, width: int, scale: int, rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 1, size=(height // scale + 2, width // scale + 2))
    noise = cv2.resize(
        noise, (width + 2 * scale, height + 2 * scale), interpolation=cv2.INTER_CUBIC
    )
    noise = noise[scale : scale + height, scale : scale + width]
    noise -= noise.min()
    return noise / max(noise.max(), 1e-8)


def run(
    name: str, image: Image.Image, *, seed: int = 0, annotators: Annotators | None = None
) -> Image.Image:
    """The control map for ``image`` (the networks run on ``annotators``)."""
    if name in NETWORKS and annotators is not None:
        return annotators.run(name, image)
    pixels = np.asarray(image.convert("RGB"))
    if name == "none":
        return image.convert("RGB")
    if name in PACKAGES:
        check(name, set(), param="preprocessor")
        shorter = min(image.size)
        return mediapipe_face.face_map(image, detect_size(pixels, shorter))
    if name == "canny":
        edges = cv2.Canny(pixels, 100, 200)
        return Image.fromarray(np.stack([edges] * 3, axis=2))
    if name == "shuffle":  # controlnet_aux's ContentShuffleDetector, seeded
        height, width = pixels.shape[:2]
        rng = np.random.default_rng(seed)
        flow_x = _noise_disk(height, width, 256, rng) * (width - 1)
        flow_y = _noise_disk(height, width, 256, rng) * (height - 1)
        shuffled = cv2.remap(pixels, flow_x.astype(np.float32), flow_y.astype(np.float32),
                             cv2.INTER_LINEAR)  # fmt: skip
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
