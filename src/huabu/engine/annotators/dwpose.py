"""DWPose: whole-body pose (body, feet, face, hands: 133 keypoints) from the two ONNX files
that sd-webui-controlnet and comfyui_controlnet_aux run, ``yolox_l.onnx`` (YOLOX-L, finds
people) and ``dw-ll_ucoco_384.onnx`` (RTMPose-L, DWPose's distilled keypoint network, SimCC
outputs), through onnxruntime. Drawn like OpenPose, so the openpose ControlNets read it.

The pre- and post-processing follow those projects' (Apache-2.0) step for step, written anew:
YOLOX's letterbox (114 grey, top-left) on unnormalised BGR, its grid decoding and NMS; each
person's box padded 1.25× to the pose network's aspect, warped to its input, normalised with
ImageNet's mean and deviation; SimCC's arg-max at half-pixel resolution; the COCO-WholeBody
order re-indexed to OpenPose's, with the neck the shoulders' mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from huabu.engine.annotators import openpose
from huabu.engine.annotators.family import Family, Networks
from huabu.engine.annotators.openpose import PARTS, Person
from huabu.errors import ModelUnavailable

#: YOLOX's input side and strides.
_DETECT_SIDE = 640
_STRIDES = (8, 16, 32)
#: RTMPose's normalisation (ImageNet's, in the channel order the image arrives in).
_MEAN = np.array([123.675, 116.28, 103.53])
_STD = np.array([58.395, 57.12, 57.375])
_SIMCC_SPLIT = 2.0
#: A keypoint is drawn when its score passes this.
_VISIBLE = 0.3
#: COCO-WholeBody (with the neck inserted at 17) → OpenPose's 18 body parts.
_FROM = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
_TO = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)


def _providers(cuda: bool) -> list[str]:
    import onnxruntime

    if cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class DwPose:
    """The two sessions; ``detect`` finds everyone in an RGB image."""

    def __init__(self, detector: Path, pose: Path, *, cuda: bool = False, threads: int = 0):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        providers = _providers(cuda)
        self.files, sessions = (detector, pose), []
        for path in (detector, pose):
            try:
                sessions.append(
                    onnxruntime.InferenceSession(str(path), options, providers=providers)
                )
            except Exception as exc:  # onnxruntime's errors derive from Exception alone
                raise _damaged(path) from exc
        self.detector, self.pose = sessions
        try:
            height, width = self.pose.get_inputs()[0].shape[2:]
            self.pose_size = (int(width), int(height))
        except (ValueError, TypeError) as exc:  # not an image network of fixed size
            raise _damaged(pose) from exc

    def detect(self, rgb: np.ndarray) -> list[Person]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        height, width = bgr.shape[:2]
        boxes = self._people(bgr)
        if len(boxes) == 0:  # the pose network on the whole picture, as the reference does
            boxes = np.array([[0, 0, width, height]], dtype=np.float64)
        points, scores = self._keypoints(bgr, boxes)
        return [_person(p, s, width, height) for p, s in zip(points, scores, strict=True)]

    def _people(self, bgr: np.ndarray) -> np.ndarray:
        """The boxes (x0, y0, x1, y1) of the people YOLOX finds."""
        ratio = min(_DETECT_SIDE / bgr.shape[0], _DETECT_SIDE / bgr.shape[1])
        size = (int(bgr.shape[1] * ratio), int(bgr.shape[0] * ratio))
        padded = np.full((_DETECT_SIDE, _DETECT_SIDE, 3), 114, dtype=np.uint8)
        padded[: size[1], : size[0]] = cv2.resize(bgr, size, interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        out = _run(self.detector, x, self.files[0])[0][0].astype(np.float64)
        if out.ndim != 2 or out.shape[1] < 6:
            raise ModelUnavailable(
                "annotator file models/annotators/yolox_l.onnx is not "
                "YOLOX's detector (its output is not boxes × 85)"
            )
        grids, strides = [], []
        for stride in _STRIDES:
            side = _DETECT_SIDE // stride
            xs, ys = np.meshgrid(np.arange(side), np.arange(side))
            grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
            strides.append(np.full((side * side, 1), stride))
        grid, stride_of = np.concatenate(grids), np.concatenate(strides)
        centres = (out[:, :2] + grid) * stride_of
        sizes = np.exp(out[:, 2:4]) * stride_of
        boxes = np.concatenate((centres - sizes / 2, centres + sizes / 2), axis=1) / ratio
        scores = out[:, 4] * out[:, 5]  # objectness × the "person" class
        keep = scores > 0.1
        boxes, scores = boxes[keep], scores[keep]
        kept = _nms(boxes, scores, 0.45)
        return boxes[kept][scores[kept] > _VISIBLE]

    def _keypoints(self, bgr: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each box's 133 keypoints (image pixels) and scores."""
        width, height = self.pose_size
        points, scores = [], []
        for box in boxes:
            centre = (box[:2] + box[2:4]) / 2
            scale = (box[2:4] - box[:2]) * 1.25
            if scale[0] > scale[1] * width / height:  # widen to the network's aspect
                scale = np.array([scale[0], scale[0] * height / width])
            else:
                scale = np.array([scale[1] * width / height, scale[1]])
            warp = _warp(centre, scale, (width, height))
            crop = cv2.warpAffine(bgr, warp, (width, height), flags=cv2.INTER_LINEAR)
            x = ((crop - _MEAN) / _STD).transpose(2, 0, 1)[None].astype(np.float32)
            simcc_x, simcc_y = _run(self.pose, x, self.files[1])[:2]
            xs, ys = simcc_x[0], simcc_y[0]
            location = np.stack((xs.argmax(1), ys.argmax(1)), axis=-1).astype(np.float64)
            score = np.minimum(xs.max(1), ys.max(1)).astype(np.float64)
            location[score <= 0] = -1
            location /= _SIMCC_SPLIT
            points.append(location / (width, height) * scale + centre - scale / 2)
            scores.append(score)
        return np.array(points), np.array(scores)


def _damaged(path: Path) -> ModelUnavailable:
    return ModelUnavailable(
        f"annotator file models/annotators/{path.name} is damaged or not "
        "the DWPose network it is named for"
    )


def _run(session: Any, x: np.ndarray, path: Path) -> list[np.ndarray]:
    try:
        return session.run(None, {session.get_inputs()[0].name: x})
    except Exception as exc:  # a graph of other inputs or outputs than DWPose's
        raise _damaged(path) from exc


def _warp(centre: np.ndarray, scale: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The affine map of the box (centre, scale) onto the network's input, from three point
    pairs as mmpose builds it (no rotation)."""

    def third(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = a - b
        return b + np.array([-d[1], d[0]])

    source = np.zeros((3, 2), dtype=np.float32)
    target = np.zeros((3, 2), dtype=np.float32)
    source[0] = centre
    source[1] = centre + np.array([0.0, scale[0] * -0.5])
    source[2] = third(source[0], source[1])
    target[0] = (size[0] * 0.5, size[1] * 0.5)
    target[1] = target[0] + np.array([0.0, size[0] * -0.5])
    target[2] = third(target[0], target[1])
    return cv2.getAffineTransform(source, target)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression (areas counted with YOLOX's +1)."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0 + 1) * (y1 - y0 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size:
        first, rest = order[0], order[1:]
        keep.append(int(first))
        w = np.maximum(0.0, np.minimum(x1[first], x1[rest]) - np.maximum(x0[first], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[first], y1[rest]) - np.maximum(y0[first], y0[rest]) + 1)
        overlap = w * h / (areas[first] + areas[rest] - w * h)
        order = rest[overlap <= threshold]
    return keep


def _person(points: np.ndarray, scores: np.ndarray, width: int, height: int) -> Person:
    """One person in OpenPose's terms: the body's 18 parts, both hands' 21 and the face's 68,
    as fractions of the image (-1: not seen)."""
    neck = points[[5, 6]].mean(axis=0)
    neck_seen = float(scores[5] > _VISIBLE and scores[6] > _VISIBLE)
    points = np.insert(points, 17, neck, axis=0)
    scores = np.insert(scores, 17, neck_seen)
    points[list(_TO)], scores[list(_TO)] = points[list(_FROM)], scores[list(_FROM)]
    normal = points / (width, height)
    normal[scores < _VISIBLE] = -1
    parts = tuple(
        (float(x), float(y)) if scores[i] > _VISIBLE else None
        for i, (x, y) in enumerate(normal[:PARTS])
    )
    return Person(parts, (normal[92:113], normal[113:134]), normal[24:92])


DETECTOR_FILE, POSE_FILE = "yolox_l.onnx", "dw-ll_ucoco_384.onnx"


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """Body, hands and face at once, drawn as OpenPose's."""
    session = networks.cached(
        "dwpose",
        lambda: DwPose(
            networks.locate(DETECTOR_FILE),
            networks.locate(POSE_FILE),
            cuda=networks.device.type == "cuda",
            threads=torch.get_num_threads(),
        ),
    )
    height, width = pixels.shape[:2]
    return openpose.draw(session.detect(pixels), width, height, hands=True, face=True)


#: ONNX graphs, run by onnxruntime: no torch network to build.
FAMILY = Family(needs={"dwpose": (DETECTOR_FILE, POSE_FILE)}, draw=_draw)
