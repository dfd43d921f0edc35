"""OpenPose's body, hand and face keypoints, drawn as the pose maps ControlNet's openpose models
were trained on: the ``openpose*`` preprocessors.

The networks are the convolutional pose machines of ``body_pose_model.pth`` (18 body parts and
19 part affinity fields: Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part
Affinity Fields", 2017), ``hand_pose_model.pth`` (21 hand keypoints: Simon et al., 2017) and
``facenet.pth`` (70 face landmarks), laid out as those files are (one flat name per layer).
The parsing (peaks, limb scores along the affinity fields, the greedy assembly into people),
the hand and face boxes and the drawing follow what sd-webui-controlnet and controlnet_aux
produce, thresholds, quirks and colours included, because ControlNet's openpose models read
exactly those maps. This module is written anew for huabu, not copied from CMU's OpenPose,
whose code and weights are licensed for non-commercial research only: an operator who uses the
weights accepts their licence.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from huabu.engine.annotators.family import Family, Networks

#: The body parts: 0 nose, 1 neck, 2–4 right shoulder/elbow/wrist, 5–7 left, 8–10 right
#: hip/knee/ankle, 11–13 left, 14/15 right/left eye, 16/17 right/left ear.
PARTS = 18
#: The limbs (pairs of parts), in the order of their affinity-field channels' use; the last two
#: (shoulder to ear) only join people found by the others.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17), (2, 16),
         (5, 17))  # fmt: skip
#: Each limb's two affinity-field channels (x, y) among the body network's 38.
FIELDS = ((12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5),
          (6, 7), (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19),
          (26, 27))  # fmt: skip
#: The colour of each part, and of the limb drawn first for it (RGB).
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
           (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
           (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170),
           (255, 0, 85))  # fmt: skip
#: The hand's bones: wrist (0) to each finger's base, then along the finger (4 joints each).
HAND_EDGES = tuple((4 * finger + joint if joint else 0, 4 * finger + joint + 1)
                   for finger in range(5) for joint in range(4))  # fmt: skip

_BOX, _STRIDE, _PAD = 368, 8, 128  # the networks' input box, output stride and padding value
#: The sizes the hand network sees each hand box at (× 368, averaged), and the face network's.
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)
FACE_SIZE = 384


#: The VGG-19 front of all three networks: (name, in, out) of each 3×3 convolution, and the
#: 2×2 max-pools between levels.
_POOL = ("pool", 0, 0)
_FRONT = [("conv1_1", 3, 64), ("conv1_2", 64, 64), _POOL, ("conv2_1", 64, 128),
          ("conv2_2", 128, 128), _POOL, ("conv3_1", 128, 256), ("conv3_2", 256, 256),
          ("conv3_3", 256, 256), ("conv3_4", 256, 256), _POOL, ("conv4_1", 256, 512),
          ("conv4_2", 512, 512)]  # fmt: skip


class _Layers(nn.Module):
    """Convolutions registered under the weight files' flat names (``conv1_1.weight`` …)."""

    def add(self, name: str, c_in: int, c_out: int, kernel: int) -> str:
        self.add_module(name, nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2))
        return name

    def chain(self, x: torch.Tensor, names: list[str], *, last_relu: bool = False) -> torch.Tensor:
        for index, name in enumerate(names):
            if name == "pool":
                x = nn.functional.max_pool2d(x, 2, 2)
                continue
            x = getattr(self, name)(x)
            if index < len(names) - 1 or last_relu:
                x = nn.functional.relu(x)
        return x

    def front(self, tail: list[tuple[str, int, int]]) -> list[str]:
        return [
            name if name == "pool" else self.add(name, c_in, c_out, 3)
            for name, c_in, c_out in _FRONT + tail
        ]

    def stage(self, template: str, c_in: int, c_out: int) -> list[str]:
        """A refinement stage: five 7×7 convolutions, a 1×1, and the 1×1 to the maps."""
        sizes = [(c_in, 128, 7)] + [(128, 128, 7)] * 4 + [(128, 128, 1), (128, c_out, 1)]
        return [self.add(template.format(n), a, b, k) for n, (a, b, k) in enumerate(sizes, 1)]


class BodyNet(_Layers):
    """``body_pose_model.pth``: six stages, each with an affinity-field branch (L1, 38 maps)
    and a part branch (L2, 19 heatmaps, the last one background)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = self.front([("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, 128)])
        self.branches: list[list[list[str]]] = []
        for stage in range(1, 7):
            pair = []
            for branch, maps in ((1, 38), (2, 19)):
                if stage == 1:
                    sizes = [(128, 128, 3)] * 3 + [(128, 512, 1), (512, maps, 1)]
                    names = [
                        self.add(f"conv5_{n}_CPM_L{branch}", a, b, k)
                        for n, (a, b, k) in enumerate(sizes, 1)
                    ]
                else:
                    names = self.stage(f"Mconv{{}}_stage{stage}_L{branch}", 185, maps)
                pair.append(names)
            self.branches.append(pair)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.chain(x, self.features, last_relu=True)
        h = features
        for stage, (fields_names, parts_names) in enumerate(self.branches, 1):
            fields = self.chain(h, fields_names)
            # The published port leaves the ReLU on the last heatmap layer (a typo in its list
            # of layers without one); the trained openpose ControlNets saw maps made that way.
            parts = self.chain(h, parts_names, last_relu=stage == 6)
            h = torch.cat([fields, parts, features], 1)
        return fields, parts


class KeypointNet(_Layers):
    """``hand_pose_model.pth`` (22 heatmaps) and ``facenet.pth`` (71): one branch, six
    stages."""

    def __init__(self, maps: int) -> None:
        super().__init__()
        self.features = self.front(
            [
                ("conv4_3", 512, 512),
                ("conv4_4", 512, 512),
                ("conv5_1", 512, 512),
                ("conv5_2", 512, 512),
                ("conv5_3_CPM", 512, 128),
            ]
        )
        first = [self.add("conv6_1_CPM", 128, 512, 1), self.add("conv6_2_CPM", 512, maps, 1)]
        self.stages = [first]
        self.stages += [
            self.stage(f"Mconv{{}}_stage{stage}", maps + 128, maps) for stage in range(2, 7)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.chain(x, self.features, last_relu=True)
        h = self.chain(features, self.stages[0])
        for names in self.stages[1:]:
            h = self.chain(torch.cat([h, features], 1), names)
        return h


def hand_net() -> KeypointNet:
    return KeypointNet(22)


def face_net() -> KeypointNet:
    return KeypointNet(71)


Parts = tuple[tuple[float, float] | None, ...]


@dataclass(frozen=True)
class Person:
    """One person's keypoints, as fractions of the image's width and height: the body parts
    (None: not found), each hand's 21 (negative: not found) and the face's landmarks."""

    parts: Parts
    hands: tuple[np.ndarray, ...] = ()
    face: np.ndarray | None = None


def _resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area when shrinking, Lanczos when growing (by the sum of the sides), per channel."""
    grow = (width + height) / (x.shape[1] + x.shape[0]) >= 1
    interpolation = cv2.INTER_LANCZOS4 if grow else cv2.INTER_AREA
    if x.ndim == 2 or x.shape[2] in (1, 3):
        return cv2.resize(x, (width, height), interpolation=interpolation)
    return np.stack(
        [
            cv2.resize(x[:, :, c], (width, height), interpolation=interpolation)
            for c in range(x.shape[2])
        ],
        axis=2,
    )


def _maps(
    network: nn.Module, bgr: np.ndarray, width: int, height: int, size: tuple[int, int]
) -> list[np.ndarray]:
    """The network's outputs for ``bgr`` resized to ``width``×``height`` (padded to the stride
    with grey), back at ``size`` (height, width), channels last."""
    small = _resize(bgr, width, height)
    pad_h, pad_w = -small.shape[0] % _STRIDE, -small.shape[1] % _STRIDE
    padded = cv2.copyMakeBorder(small, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(_PAD,) * 3)
    device = next(network.parameters()).device
    x = torch.from_numpy(padded.astype(np.float32) / 256 - 0.5).permute(2, 0, 1)[None]
    outputs = network(x.to(device))
    found = []
    for output in outputs if isinstance(outputs, tuple) else (outputs,):
        maps = output[0].float().permute(1, 2, 0).cpu().numpy()
        maps = _resize(maps, maps.shape[1] * _STRIDE, maps.shape[0] * _STRIDE)
        maps = maps[: small.shape[0], : small.shape[1]]
        found.append(_resize(maps, size[1], size[0]))
    return found


def _peaks(heatmap: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Local maxima (x, y, score) of the smoothed heatmap over ``threshold``, row by row."""
    smooth = ndimage.gaussian_filter(heatmap, sigma=3)
    padded = np.pad(smooth, 1)
    neighbours = (padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:])
    peak = (smooth > threshold) & np.logical_and.reduce([smooth >= n for n in neighbours])
    ys, xs = np.nonzero(peak)
    return np.stack([xs, ys, heatmap[ys, xs]], axis=1) if len(xs) else np.zeros((0, 3))


def _limb_connections(a: np.ndarray, b: np.ndarray, field: np.ndarray, height: int) -> list:
    """The (index in a, index in b, score) of the limbs kept: every pair scored along the
    affinity field (10 samples, 80 % of them over 0.05, a penalty for limbs longer than half
    the image), best first, each part used once."""
    candidates = []
    for i, (ax, ay, _) in enumerate(a):
        for j, (bx, by, _) in enumerate(b):
            vx, vy = bx - ax, by - ay
            norm = max(0.001, math.hypot(vx, vy))
            xs = np.rint(np.linspace(ax, bx, num=10)).astype(int)
            ys = np.rint(np.linspace(ay, by, num=10)).astype(int)
            scores = field[ys, xs, 0] * (vx / norm) + field[ys, xs, 1] * (vy / norm)
            prior = sum(scores) / len(scores) + min(0.5 * height / norm - 1, 0)
            if np.count_nonzero(scores > 0.05) > 0.8 * len(scores) and prior > 0:
                candidates.append((i, j, prior))
    candidates.sort(key=lambda c: c[2], reverse=True)  # stable: ties keep scan order
    kept, used_a, used_b = [], set(), set()
    for i, j, score in candidates:
        if i not in used_a and j not in used_b:
            kept.append((i, j, score))
            used_a.add(i)
            used_b.add(j)
            if len(kept) >= min(len(a), len(b)):
                break
    return kept


def detect_bodies(parts: np.ndarray, fields: np.ndarray) -> list[Parts]:
    """The body parts (pixel x, y) of the people in the part heatmaps (H, W, ≥18) and the
    affinity fields (H, W, 38): each with at least 4 parts and an average score of 0.4."""
    height = parts.shape[0]
    peaks = [_peaks(parts[:, :, p]) for p in range(PARTS)]
    offsets = np.cumsum([0] + [len(p) for p in peaks])
    everything = np.concatenate(peaks) if offsets[-1] else np.zeros((0, 3))
    # A person: the global peak index of each part (−1: none), its score and its part count.
    people: list[list[float]] = []
    for limb, ((part_a, part_b), channels) in enumerate(zip(LIMBS, FIELDS, strict=True)):
        a, b = peaks[part_a], peaks[part_b]
        if not len(a) or not len(b):
            continue
        for i, j, score in _limb_connections(a, b, fields[:, :, list(channels)], height):
            ga, gb = offsets[part_a] + i, offsets[part_b] + j
            holders = [p for p in people if p[part_a] == ga or p[part_b] == gb][:2]
            if len(holders) == 1 or (len(holders) == 2 and _overlap(*holders)):
                person = holders[0]
                if person[part_b] != gb:
                    person[part_b] = gb
                    person[-1] += 1
                    person[-2] += everything[gb, 2] + score
            elif len(holders) == 2:  # two disjoint people this limb joins: one person
                first, second = holders
                for p in range(PARTS):
                    if second[p] >= 0:
                        first[p] = second[p]
                first[-2] += second[-2] + score
                first[-1] += second[-1]
                people = [p for p in people if p is not second]
            elif limb < 17:
                person = [-1.0] * PARTS + [everything[ga, 2] + everything[gb, 2] + score, 2]
                person[part_a], person[part_b] = ga, gb
                people.append(person)
    xy = everything[:, :2].tolist()
    return [
        tuple(None if p[k] < 0 else tuple(xy[int(p[k])]) for k in range(PARTS))
        for p in people
        if p[-1] >= 4 and p[-2] / p[-1] >= 0.4
    ]


def _overlap(first: list[float], second: list[float]) -> bool:
    return any(first[p] >= 0 and second[p] >= 0 for p in range(PARTS))


def hand_boxes(parts: Parts, width: int, height: int) -> list[tuple[int, int, int]]:
    """Square boxes (x, y, side) around each hand whose shoulder, elbow and wrist were found:
    beyond the wrist by a third of the forearm, 1.5× the longer of forearm and 0.9× upper
    arm, clipped to the image; none under 20 pixels. Left hand first."""
    boxes = []
    for shoulder, elbow, wrist in ((5, 6, 7), (2, 3, 4)):
        joints = [parts[k] for k in (shoulder, elbow, wrist)]
        if any(j is None for j in joints):
            continue
        (x1, y1), (x2, y2), (x3, y3) = joints  # type: ignore[misc]
        side = 1.5 * max(math.hypot(x3 - x2, y3 - y2), 0.9 * math.hypot(x2 - x1, y2 - y1))
        x = max(0.0, x3 + 0.33 * (x3 - x2) - side / 2)
        y = max(0.0, y3 + 0.33 * (y3 - y2) - side / 2)
        side = min(
            side if x + side <= width else width - x, side if y + side <= height else height - y
        )
        if side >= 20:
            boxes.append((int(x), int(y), int(side)))
    return boxes


def face_box(parts: Parts, width: int, height: int) -> tuple[int, int, int] | None:
    """A square box around the face, from the nose and the eyes (3× their distance) or ears
    (1.5×); none under 20 pixels."""
    nose = parts[0]
    others = [(parts[k], factor) for k, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5))]
    if nose is None or all(point is None for point, _ in others):
        return None
    reach = max(
        (
            max(abs(nose[0] - p[0]), abs(nose[1] - p[1])) * factor
            for p, factor in others
            if p is not None
        ),
        default=0.0,
    )
    x, y = max(0.0, nose[0] - reach), max(0.0, nose[1] - reach)
    # As the reference does: the box is 2×reach, but clipped when reach (not 2×) overflows.
    side = min(
        2 * reach if x + reach <= width else width - x,
        2 * reach if y + reach <= height else height - y,
    )
    return (int(x), int(y), int(side)) if side >= 20 else None


def hand_keypoints(network: nn.Module, crop: np.ndarray) -> np.ndarray:
    """21 hand keypoints (x, y) in the crop, or (0, 0) where a heatmap has nothing over 0.05:
    the heatmaps averaged over ``HAND_SCALES`` at 128², each keypoint the maximum of the
    strongest connected region."""
    side = 128
    blurred = cv2.GaussianBlur(crop, (0, 0), 0.8)
    average = np.zeros((side, side, 22))
    for scale in HAND_SCALES:
        box = int(scale * _BOX)
        (maps,) = _maps(network, blurred, box, box, (side, side))
        average += maps / len(HAND_SCALES)
    found = []
    for part in range(21):
        heatmap = average[:, :, part]
        binary = ndimage.gaussian_filter(heatmap, sigma=3) > 0.05
        if not binary.any():
            found.append((0, 0))
            continue
        labels, count = ndimage.label(binary, structure=np.ones((3, 3)))
        sums = ndimage.sum(heatmap, labels, index=np.arange(1, count + 1))
        kept = np.where(labels == int(np.argmax(sums)) + 1, heatmap, 0)
        row = int(np.argmax(kept.max(axis=1)))
        column = int(np.argmax(kept[row]))
        found.append((int(column * crop.shape[1] / side), int(row * crop.shape[0] / side)))
    return np.array(found, dtype=np.float32)


def face_keypoints(network: nn.Module, crop: np.ndarray) -> np.ndarray:
    """Face landmarks (x, y) in the crop: each heatmap's maximum where it exceeds 0.05 (the
    net's last stage at ``FACE_SIZE``², brought to the crop's size)."""
    small = _resize(crop, FACE_SIZE, FACE_SIZE)
    device = next(network.parameters()).device
    x = torch.from_numpy(small).permute(2, 0, 1).float()[None] / 256.0 - 0.5
    heatmaps = network(x.to(device))
    heatmaps = (
        nn.functional.interpolate(
            heatmaps.float(), crop.shape[:2], mode="bilinear", align_corners=True
        )[0]
        .cpu()
        .numpy()
    )
    found = []
    for heatmap in heatmaps:
        if (heatmap > 0.05).any():
            row, column = np.unravel_index(
                np.argmax(np.where(heatmap > 0.05, heatmap, -np.inf)), heatmap.shape
            )
            found.append((column, row))
    return np.array(found, dtype=np.float32).reshape(-1, 2)


def detect(
    rgb: np.ndarray, body: nn.Module, hand: nn.Module | None = None, face: nn.Module | None = None
) -> list[Person]:
    """Everyone in ``rgb`` (the detect-size image), with hands and faces when their networks
    are given."""
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    scale = 0.5 * _BOX / height
    fields, heatmaps = _maps(body, bgr, int(width * scale), int(height * scale), (height, width))
    found = []
    for parts in detect_bodies(heatmaps.astype(np.float64), fields.astype(np.float64)):
        hands, landmarks = [], None
        for x, y, side in hand_boxes(parts, width, height) if hand is not None else ():
            points = hand_keypoints(hand, bgr[y : y + side, x : x + side])
            hands.append(np.where(points < 1e-6, -1, points + (x, y)) / (width, height))
        box = face_box(parts, width, height) if face is not None else None
        if box is not None:
            x, y, side = box
            points = face_keypoints(face, bgr[y : y + side, x : x + side])
            landmarks = np.where(points < 1e-6, -1, points + (x, y)) / (width, height)
        normalised = tuple(None if p is None else (p[0] / width, p[1] / height) for p in parts)
        found.append(Person(normalised, tuple(hands), landmarks))
    return found


def draw(
    people: list[Person],
    width: int,
    height: int,
    *,
    body: bool = True,
    hands: bool = False,
    face: bool = False,
) -> np.ndarray:
    """The pose map (RGB): limbs as ellipses in 60 % of their colour, parts as dots; hand
    bones in a rainbow with blue joints; face landmarks as white dots."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    size = np.array([width, height], dtype=np.float64)
    for person in people:
        if body:
            _draw_body(canvas, person.parts, size)
        if hands:
            for points in person.hands:
                _draw_hand(canvas, (points * size).astype(int))
        if face and person.face is not None:
            for x, y in (person.face * size).astype(int):
                if x > 0.01 and y > 0.01:
                    cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)
    return canvas


def _draw_body(canvas: np.ndarray, parts: Parts, size: np.ndarray) -> None:
    for (a, b), colour in zip(LIMBS[:17], COLOURS, strict=False):
        if parts[a] is None or parts[b] is None:
            continue
        (xa, ya), (xb, yb) = np.array(parts[a]) * size, np.array(parts[b]) * size
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = cv2.ellipse2Poly(
            (int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), 4), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, [int(c * 0.6) for c in colour])
    for point, colour in zip(parts, COLOURS, strict=True):
        if point is not None:
            x, y = np.array(point) * size
            cv2.circle(canvas, (int(x), int(y)), 4, colour, thickness=-1)


def _draw_hand(canvas: np.ndarray, xy: np.ndarray) -> None:
    for index, (a, b) in enumerate(HAND_EDGES):
        if (xy[a] > 0.01).all() and (xy[b] > 0.01).all():
            rgb = colorsys.hsv_to_rgb(index / len(HAND_EDGES), 1.0, 1.0)
            cv2.line(
                canvas,
                tuple(map(int, xy[a])),
                tuple(map(int, xy[b])),
                [c * 255 for c in rgb],
                thickness=2,
            )
    for x, y in xy:
        if x > 0.01 and y > 0.01:
            cv2.circle(canvas, (int(x), int(y)), 4, (0, 0, 255), thickness=-1)


BODY_FILE, HAND_FILE, FACE_FILE = "body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"


def _draw(networks: Networks, name: str, pixels: np.ndarray) -> np.ndarray:
    """The body network always, the hand and face ones where ``name`` draws them
    (``openpose_faceonly`` finds the face from the body but draws only it)."""
    height, width = pixels.shape[:2]
    files = FAMILY.needs[name]
    body = networks.network(BODY_FILE)
    hand = networks.network(HAND_FILE) if HAND_FILE in files else None
    face = networks.network(FACE_FILE) if FACE_FILE in files else None
    people = detect(pixels, body, hand, face)
    return draw(
        people,
        width,
        height,
        body=name != "openpose_faceonly",
        hands=hand is not None,
        face=face is not None,
    )


FAMILY = Family(
    needs={
        "openpose": (BODY_FILE,),
        "openpose_hand": (BODY_FILE, HAND_FILE),
        "openpose_face": (BODY_FILE, FACE_FILE),
        "openpose_faceonly": (BODY_FILE, FACE_FILE),
        "openpose_full": (BODY_FILE, HAND_FILE, FACE_FILE),
    },
    networks={BODY_FILE: BodyNet, HAND_FILE: hand_net, FACE_FILE: face_net},
    draw=_draw,
)
