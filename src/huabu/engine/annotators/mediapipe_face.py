"""The ``mediapipe_face`` preprocessor: MediaPipe's face mesh (the model files ship inside the
``mediapipe`` package), drawn as the MediaPipe-face ControlNets were trained on it: the face's
outline, eyes, eyebrows and lips as 2-pixel lines in their own colours, and the two pupils as
4-pixel squares, on black. Written after controlnet_aux's ``mediapipe_face`` (Apache-2.0): one
face at a confidence of 0.5, faces under 64 pixels ignored.

``mediapipe`` 0.10.21 is the last release with the face-mesh solution; make install installs
it without its declared dependencies (jax, opencv-contrib and numpy<2 are not needed for this
and would clash with ours).
"""

from __future__ import annotations

import math
import threading
from typing import Any

import cv2
import numpy as np

from huabu.engine.annotators.family import Family, Networks

#: The smallest face side drawn, in detect-size pixels.
MIN_FACE = 64
#: RGB colours of each feature's lines (the reference draws in BGR and flips at the end).
_OUTLINE, _MOUTH = (10, 200, 10), (10, 180, 10)
_LEFT_EYE, _LEFT_BROW = (10, 200, 180), (10, 220, 180)
_RIGHT_EYE, _RIGHT_BROW = (180, 200, 10), (180, 220, 10)
#: The pupils' landmarks (with refined landmarks) and their colours.
_PUPILS = {468: (250, 200, 10), 473: (10, 200, 250)}

_lock = threading.Lock()
_mesh: Any = None


def _connections() -> dict[tuple[int, int], tuple[int, int, int]]:
    from mediapipe.python.solutions import face_mesh as fm

    spec: dict[tuple[int, int], tuple[int, int, int]] = {}
    features = (
        (fm.FACEMESH_FACE_OVAL, _OUTLINE),
        (fm.FACEMESH_LEFT_EYE, _LEFT_EYE),
        (fm.FACEMESH_LEFT_EYEBROW, _LEFT_BROW),
        (fm.FACEMESH_RIGHT_EYE, _RIGHT_EYE),
        (fm.FACEMESH_RIGHT_EYEBROW, _RIGHT_BROW),
        (fm.FACEMESH_LIPS, _MOUTH),
    )
    for edges, colour in features:
        for edge in edges:
            spec[edge] = colour
    return spec


def landmarks(rgb: np.ndarray) -> list[np.ndarray]:
    """Each face's landmarks (x, y as fractions of the image), at most one face."""
    global _mesh
    from mediapipe.python.solutions import face_mesh

    with _lock:  # one graph per process; it is not safe to share between threads at once
        if _mesh is None:
            _mesh = face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=0.5,
            )
        found = _mesh.process(np.ascontiguousarray(rgb)).multi_face_landmarks
    return [np.array([(p.x, p.y) for p in face.landmark]) for face in found or ()]


def draw(faces: list[np.ndarray], width: int, height: int) -> np.ndarray:
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    spec = _connections()
    for points in faces:
        side = min(np.ptp(points[:, 0]) * width, np.ptp(points[:, 1]) * height)
        if side < MIN_FACE:
            continue
        pixels = {i: _pixel(x, y, width, height) for i, (x, y) in enumerate(points)}
        for (a, b), colour in spec.items():
            if pixels[a] is not None and pixels[b] is not None:
                cv2.line(canvas, pixels[a], pixels[b], colour, 2)
        for index, colour in _PUPILS.items():
            x, y = points[index]
            if 0 <= x < 1 and 0 <= y < 1:
                px, py = int(width * x), int(height * y)
                canvas[max(py - 2, 0) : py + 2, max(px - 2, 0) : px + 2] = colour
    return canvas


def _pixel(x: float, y: float, width: int, height: int) -> tuple[int, int] | None:
    """MediaPipe's normalised → pixel coordinates: None outside the image."""

    def inside(v: float) -> bool:
        return (v > 0 or math.isclose(0, v)) and (v < 1 or math.isclose(1, v))

    if not (inside(x) and inside(y)):
        return None
    return min(math.floor(x * width), width - 1), min(math.floor(y * height), height - 1)


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape[:2]
    return draw(landmarks(pixels), width, height)


#: The network ships in the mediapipe package (its own model file).
FAMILY = Family(needs={"mediapipe_face": ()}, draw=_draw, package="mediapipe")
