"""ControlNet preprocessors that run a network, on random-weight annotator files written in the
exact layout of lllyasviel/Annotators (plain state dicts in ``.pth`` files), so the real
loading code runs: every such preprocessor makes a control map of the output's size that
depends on its input, and one whose file is missing is refused naming it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REF, max_difference
from huabu.catalog.preprocessors import NETWORKS, PACKAGES, WEIGHTLESS, check, listing
from huabu.engine.annotators.hed import Hed
from huabu.engine.annotators.leres import Leres, MergeNet
from huabu.engine.annotators.lineart import LineartGenerator
from huabu.engine.annotators.lineart_anime import AnimeLineart
from huabu.engine.annotators.midas import DptHybrid
from huabu.engine.annotators.mlsd import Mlsd
from huabu.engine.annotators.normal_bae import NormalBae
from huabu.engine.annotators.openpose import COLOURS, BodyNet, face_net, hand_net
from huabu.engine.annotators.pidinet import PiDiNet
from huabu.engine.annotators.zoe import ZoeDepth, relative_index
from huabu.errors import InvalidRequest
from huabu.native import ControlUnit, GenerationRequest
from huabu.settings import Settings

pytestmark = pytest.mark.slow  # an engine of its own


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, settings):
    """A home with the demo models and every annotator file huabu runs, random weights."""
    home = tmp_path_factory.mktemp("annotated")
    models = home / "models"
    models.mkdir()
    for kind in ("checkpoints", "controlnet"):
        (models / kind).symlink_to(settings.models_dir / kind)
    folder = models / "annotators"
    folder.mkdir()
    torch.manual_seed(7)
    for file_name, network in (
        ("ControlNetHED.pth", Hed()),
        ("sk_model.pth", LineartGenerator()),
        ("sk_model2.pth", LineartGenerator()),
    ):
        if isinstance(network, Hed):
            with torch.no_grad():  # random edges strong enough to cross scribble's threshold
                network.norm.normal_()
                for block in (
                    network.block1,
                    network.block2,
                    network.block3,
                    network.block4,
                    network.block5,
                ):
                    block.projection.bias.fill_(1.5)
        torch.save(network.state_dict(), folder / file_name)
    # PiDiNet's file is its training checkpoint: the weights under "state_dict", as saved
    # from DataParallel ("module." keys).
    pidinet = PiDiNet()
    with torch.no_grad():  # random edges that vary (the trained fuse is 0.25 per level)
        pidinet.classifier.weight.fill_(1.0)
        for reduce in pidinet.conv_reduces:
            reduce.conv.weight.mul_(50.0)
    state = {f"module.{key}": value for key, value in pidinet.state_dict().items()}
    torch.save({"epoch": 1, "state_dict": state}, folder / "table5_pidinet.pth")
    # netG.pth is 218 MB in float32; its layout in half precision is half that (loading casts).
    anime = {key: value.half() for key, value in AnimeLineart().state_dict().items()}
    torch.save(anime, folder / "netG.pth")
    mlsd = Mlsd()
    with torch.no_grad():  # centres and segment lengths that vary across the image
        mlsd.block23.conv3.weight[7:12] *= 200.0
    torch.save(mlsd.state_dict(), folder / "mlsd_large_512_fp32.pth")
    for file_name, network in (
        ("body_pose_model.pth", routed_body()),
        ("hand_pose_model.pth", routed_keypoints(hand_net(), 22)),
        ("facenet.pth", routed_keypoints(face_net(), 71)),
    ):
        torch.save({k: v.half() for k, v in network.state_dict().items()}, folder / file_name)
    write_dwpose(folder)
    # MiDaS's file as MiDaS saved it: with the classifier timm's ViT was built with (unused).
    depth = {k: v.half() for k, v in DptHybrid().state_dict().items()}
    depth |= {
        "pretrained.model.head.weight": torch.zeros(1000, 768, dtype=torch.half),
        "pretrained.model.head.bias": torch.zeros(1000, dtype=torch.half),
    }
    torch.save(depth, folder / "dpt_hybrid-midas-501f0c75.pt")
    # Bae's file is a training checkpoint: the weights under "model", "module." keys.
    normals = NormalBae()
    with torch.no_grad():  # batch statistics that keep the signal alive through 39 blocks
        for name, buffer in normals.named_buffers():
            if name.endswith("running_var"):
                buffer.fill_(0.5)
    state = {f"module.{k}": v.half() for k, v in normals.state_dict().items()}
    torch.save({"model": state}, folder / "scannet.pt")
    # LeReS's: the network under "depth_model", saved from DataParallel.
    leres = {f"module.{k}": v.half() for k, v in Leres().state_dict().items()}
    torch.save({"depth_model": leres}, folder / "res101.pth")
    # The boosting's merge network, as pix2pix saves it (a plain state dict).
    merge = {k: v.half() for k, v in MergeNet().state_dict().items()}
    torch.save(merge, folder / "latest_net_G.pth")
    torch.save({"model": zoe_state()}, folder / "ZoeD_M12_N.pt")
    return Settings(home=home, threads=2)


def zoe_state() -> dict[str, torch.Tensor]:
    """ZoeDepth's weights as ZoeDepth saved them with timm 0.6 (690 MB in half precision):
    BEiT's unused classifier and each block's relative position index included."""
    network = ZoeDepth()
    with torch.no_grad():  # a metric head whose estimate varies across the picture
        for name, parameter in network.named_parameters():
            if not name.startswith("core."):
                parameter.normal_(0, 0.3)
    state = {k: v.half() for k, v in network.state_dict().items()}
    beit = "core.core.pretrained.model."
    for block in range(24):
        state[f"{beit}blocks.{block}.attn.relative_position_index"] = relative_index(24, 24)
    for name, shape in (
        ("head.weight", (1000, 1024)),
        ("head.bias", (1000,)),
        ("fc_norm.weight", (1024,)),
        ("fc_norm.bias", (1024,)),
    ):
        state[beit + name] = torch.zeros(shape, dtype=torch.half)
    return state


# DWPose's two ONNX graphs, in the inputs and outputs of the real ones: YOLOX-L takes BGR
# 1×3×640×640 and gives 8400 anchors × 85 (box, objectness, 80 classes); RTMPose takes a
# normalised 1×3×384×288 crop and gives SimCC 133×576 and 133×768. These "find" one person
# filling the picture, and put every keypoint at a fixed offset from the brightest column
# of the red channel and the brightest row of the green one: a yellow dot is a person.
#: Offsets (crop pixels) of COCO-WholeBody's 17 body keypoints from the dot: a standing figure.
BODY = [(0, -60), (-6, -66), (6, -66), (-12, -62), (12, -62), (-24, -36), (24, -36),
        (-36, -6), (36, -6), (-42, 24), (42, 24), (-14, 30), (14, 30), (-16, 80), (16, 80),
        (-18, 130), (18, 130)]  # fmt: skip


def dwpose_offsets() -> np.ndarray:
    offsets = np.zeros((133, 2), dtype=np.int64)
    offsets[:17] = BODY
    offsets[17:23] = [(-18, 136), (-12, 138), (-22, 136), (18, 136), (12, 138), (22, 136)]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)  # the face: a ring at the nose
    offsets[23:91] = np.stack((8 * np.cos(angles), -60 + 8 * np.sin(angles)), 1).round()
    fingers = np.array([(0, 0)] + [(f * 3 - 6, 3 * j + 3) for f in range(5) for j in range(4)])
    offsets[91:112] = fingers + (-42, 30)  # each hand a fan below its wrist
    offsets[112:133] = fingers + (42, 30)
    return offsets


class _Detector(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(1, 8400, 85)
        out[0, 0, :2] = 40.0  # one confident person: the whole 640² input
        out[0, 0, 2:4] = float(np.log(80))
        out[0, 0, 4:6] = 1.0
        return out + 0 * images.mean()


class _Pose(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        offsets = dwpose_offsets()
        columns, rows = np.arange(576) // 2, np.arange(768) // 2
        self.register_buffer(
            "x_index", torch.from_numpy(np.clip(columns[None] - offsets[:, :1], 0, 287))
        )
        self.register_buffer(
            "y_index", torch.from_numpy(np.clip(rows[None] - offsets[:, 1:], 0, 383))
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        red_columns = x[:, 2].amax(dim=1)[0]  # the input is BGR
        green_rows = x[:, 1].amax(dim=2)[0]
        return red_columns[self.x_index][None], green_rows[self.y_index][None]


def write_dwpose(folder) -> None:
    for network, sample, names, file_name in (
        (_Detector(), torch.zeros(1, 3, 640, 640), (["images"], ["output"]), "yolox_l.onnx"),
        (
            _Pose(),
            torch.zeros(1, 3, 384, 288),
            (["input"], ["simcc_x", "simcc_y"]),
            "dw-ll_ucoco_384.onnx",
        ),
    ):
        torch.onnx.export(
            network,
            (sample,),
            str(folder / file_name),
            input_names=names[0],
            output_names=names[1],
            dynamo=False,
        )


# OpenPose's networks with random weights find no one. These pass the picture's red through
# as every part's (or hand or face keypoint's) heatmap and its green as every affinity field:
# red dots joined by green strokes are people to the real parsing code that follows.
def _route(conv: torch.nn.Conv2d, pairs) -> None:
    """Zero the convolution, then copy input channel i to output channel o (centre tap)."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        middle = conv.kernel_size[0] // 2
        for o, i in pairs:
            conv.weight[o, i, middle, middle] = 1.0


def routed_body() -> BodyNet:
    network = BodyNet()
    for name, conv in network.named_children():
        if name == "conv1_1":
            _route(conv, [(0, 2), (1, 1)])  # the input is BGR: red to 0, green to 1
        elif name.startswith("Mconv1_"):  # stages 2–6 read 38 fields, 19 heatmaps, features
            _route(conv, [(0, 57), (1, 58)])
        elif name in ("conv5_5_CPM_L1",) or name.startswith("Mconv7_") and name.endswith("L1"):
            _route(conv, [(o, 1) for o in range(38)])
        elif name in ("conv5_5_CPM_L2",) or name.startswith("Mconv7_") and name.endswith("L2"):
            _route(conv, [(o, 0) for o in range(18)])
        else:
            _route(conv, [(0, 0), (1, 1)])
    return network


def routed_keypoints(network: torch.nn.Module, maps: int) -> torch.nn.Module:
    for name, conv in network.named_children():
        if name == "conv1_1":
            _route(conv, [(0, 2)])
        elif name.startswith("Mconv1_"):
            _route(conv, [(0, maps)])
        elif name == "conv6_2_CPM" or name.startswith("Mconv7_"):
            _route(conv, [(o, 0) for o in range(maps - 1)])
        else:
            _route(conv, [(0, 0)])
    return network


def figure(shift: int) -> Image.Image:
    """Four red dots down a zigzag, joined by green strokes (every stroke runs down and so
    along the routed affinity fields): neck, shoulders, elbows and wrists to the parser."""
    pixels = np.zeros((256, 256, 3), np.uint8)
    dots = [(100 + shift, 30), (140 + shift, 90), (110 + shift, 150), (150 + shift, 210)]
    for start, end in zip(dots, dots[1:], strict=False):
        cv2.line(pixels, start, end, (0, 255, 0), 16)
    for dot in dots:
        cv2.circle(pixels, dot, 12, (255, 255, 0), -1)
    return Image.fromarray(pixels)


@pytest.fixture
def quick_pose(monkeypatch):
    """Hands at 92² and faces at 96², not at four scales to 736² and 384²: the same code, fewer
    multiply-adds on two cores."""
    from huabu.engine.annotators import openpose

    monkeypatch.setattr(openpose, "HAND_SCALES", (0.25,))
    monkeypatch.setattr(openpose, "FACE_SIZE", 96)


@pytest.fixture(scope="module")
def annotating(annotated):
    from huabu.engine.engine import Engine

    return Engine(annotated)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (6, 6, 3)), np.ones((12, 12, 1))).astype(np.uint8)
    return Image.fromarray(base[:64, :72])


#: Each family's map of ``picture(1)`` on the fixture's seeded weights, averaged over 8×8
#: blocks: the output of the ports when they matched their reference code, pinned so that a
#: change of a port's arithmetic cannot pass unseen. ``HUABU_GOLDEN=update`` rewrites it
#: (only when a change of output is meant, and said in the commit).
GOLDEN = Path(__file__).parent / "golden" / "annotators.json"


def assert_golden(name: str, control_map: Image.Image) -> None:
    pixels = np.asarray(control_map, dtype=np.float64)
    height, width = (pixels.shape[0] // 8) * 8, (pixels.shape[1] // 8) * 8
    blocks = pixels[:height, :width].reshape(height // 8, 8, width // 8, 8, 3).mean(axis=(1, 3))
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("HUABU_GOLDEN") == "update":
        golden[name] = np.round(blocks, 2).tolist()
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items()))) + "\n")
        return
    assert name in golden, f"no golden map for {name}: run with HUABU_GOLDEN=update"
    difference = np.abs(blocks - np.array(golden[name]))
    # The same code on another CPU may round a few pixels differently (a thresholded map
    # flips a pixel: 4 levels in its block's mean); a changed port moves whole blocks.
    assert difference.mean() < 1.0 and difference.max() < 12, (difference.mean(), difference.max())


@pytest.mark.parametrize(
    "name",
    sorted(n for n in NETWORKS if "pose" not in n and n not in ("depth", "lineart"))
    + ["openpose", "dwpose"],
)  # the aliases depth and lineart run the same networks as depth_midas and
# lineart_realistic; the other openpose variants: in
# test_openpose_draws_bodies_hands_and_faces_as_asked
def test_each_network_preprocessor_maps_its_input(annotating, name, quick_pose):
    from huabu.engine import annotators

    pose = "pose" in name
    images = [figure(shift) if pose else picture(seed) for seed, shift in ((1, 0), (2, 40))]
    maps = [annotators.run(name, image, annotators=annotating.annotators) for image in images]
    for image, control_map in zip(images, maps, strict=True):
        assert control_map.size == image.size and control_map.mode == "RGB"
        assert np.asarray(control_map).std() > 0  # not a flat field
    assert max_difference(*maps) > 0  # the map depends on the input
    assert_golden(name, maps[0])
    if name.startswith("scribble"):  # scribbles are black and white
        assert set(np.unique(np.asarray(maps[0]))) <= {0, 255}
    if name.startswith("depth"):  # grey, scaled to the full range: far black, near white
        depth = np.asarray(maps[0])
        assert (depth[..., 0] == depth[..., 1]).all() and (depth[..., 1] == depth[..., 2]).all()
        assert depth.min() <= 2 and depth.max() >= 230  # (resized from the detect size)


def test_openpose_draws_bodies_hands_and_faces_as_asked(annotating, quick_pose):
    from huabu.engine import annotators

    def pose(name: str) -> np.ndarray:
        return np.asarray(annotators.run(name, figure(0), annotators=annotating.annotators))

    names = ("openpose", "openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full")
    body, hands, faces, face_only, full = (pose(name) for name in names)
    # Limbs in 60 % of their colour, joints in full colour, on black: the openpose models'
    # convention (the zigzag gives people of several limbs each).
    colours = {tuple(int(c * 0.6) for c in colour) for colour in COLOURS}
    lit = {tuple(c) for c in body[body.max(axis=2) > 0]}
    assert lit <= colours | set(COLOURS) and len(lit & colours) >= 2 and lit & set(COLOURS)
    assert max_difference(body, hands) > 0 and max_difference(body, faces) > 0
    # Only the face's white landmarks: no body drawn, though the body found the face.
    lit = face_only[face_only.max(axis=2) > 0]
    assert len(lit) and (lit == 255).all()
    # The full map has both: it differs from each map that has only one of them.
    assert max_difference(full, hands) > 0 and max_difference(full, faces) > 0
    for map_ in (body, hands, faces, face_only, full):
        assert map_.shape == (256, 256, 3)


def lit(control_map: Image.Image) -> np.ndarray:
    """The (x, y) of every drawn pixel."""
    ys, xs = np.nonzero(np.asarray(control_map).max(axis=2))
    return np.stack((xs, ys), axis=1)


def test_dwpose_draws_the_whole_body_where_the_network_finds_it(annotating):
    """The keypoints come back through the detector's box, the crop's warp and SimCC's
    decoding to where the network put them: the figure follows the dot that the routed
    network reads, and is drawn as OpenPose's (limbs, blue hand joints, white face dots)."""
    from huabu.engine import annotators

    def dot(x: int) -> Image.Image:
        pixels = np.zeros((256, 256, 3), np.uint8)
        cv2.circle(pixels, (x, 110), 6, (255, 255, 0), -1)
        return Image.fromarray(pixels)

    maps = [annotators.run("dwpose", dot(x), annotators=annotating.annotators) for x in (100, 140)]
    first, moved = lit(maps[0]), lit(maps[1])
    assert len(first) > 1000 and len(first) == len(moved)
    assert (moved.mean(axis=0) - first.mean(axis=0)).round(1).tolist() == [40.0, 0.0]
    # The figure spans what the offsets say (crop pixels ÷ 0.9 into the picture's) from the
    # dot's top row (104: the arg-max finds the first of its brightest rows): from the face
    # ring's top 68 above to the ankles 130 below.
    top, bottom = first[:, 1].min(), first[:, 1].max()
    assert abs(top - (104 - 68 / 0.9)) <= 4 and bottom >= 104 + 130 / 0.9
    pixels = np.asarray(maps[0])
    colours = {tuple(c) for c in pixels[pixels.max(axis=2) > 0]}
    assert {(0, 0, 255), (255, 255, 255)} <= colours  # hand joints, face landmarks
    assert {tuple(int(c * 0.6) for c in colour) for colour in COLOURS} & colours  # limbs


def test_leres_boost_refines_where_the_picture_has_detail():
    """depth_leres++'s plan, without the networks: the resolution search settles on the
    receptive field for a picture whose detail is in one corner (more of it is far from an
    edge), and the patches it refines cover that corner, none the flat rest."""
    from huabu.engine.annotators.leres_boost import (
        RECEPTIVE_FIELD,
        _patches,
        _processing_resolution,
    )

    pixels = np.full((448, 448, 3), 120, np.uint8)
    pixels[20:120, 30:140] = np.random.default_rng(1).integers(0, 255, (100, 110, 3))
    size, density = _processing_resolution(pixels, RECEPTIVE_FIELD, 0.2, 3, 1600)
    assert size == RECEPTIVE_FIELD and 0 < density < 0.2
    textured = np.random.default_rng(2).integers(0, 255, (448, 448, 3), np.uint8)
    assert _processing_resolution(textured, RECEPTIVE_FIELD, 0.2, 3, 1600)[0] > size
    big = cv2.resize(pixels, (2240, 2240), interpolation=cv2.INTER_CUBIC)
    patches = _patches(big, 2 * RECEPTIVE_FIELD, 0.2)
    assert patches
    for x, y, w, h in patches:  # each overlaps the detailed corner (×5: 100…700, 150…600)
        assert x < 700 and y < 600 and x + w > 150 and y + h > 100
    assert [p[2] for p in patches] == sorted((p[2] for p in patches), reverse=True)


def test_normals_are_unit_vectors_in_colour(annotating):
    """Bae's normals as RGB: each pixel a unit vector mapped from −1…1 to 0…255."""
    from huabu.engine import annotators

    normals = annotators.run("normal_bae", picture(5), annotators=annotating.annotators)
    vectors = np.asarray(normals).astype(np.float64) / 127.5 - 1.0
    lengths = np.linalg.norm(vectors, axis=2)
    assert np.median(lengths) == pytest.approx(1.0, abs=0.05)  # (resizing blends a little)
    pixels = np.asarray(normals).astype(int)
    assert (pixels[..., 0] != pixels[..., 1]).any()  # a colour map, not a grey one


def test_mediapipe_face_draws_the_face_it_finds():
    """MediaPipe's own face mesh on a real portrait (matplotlib's sample photograph of Grace
    Hopper): the outline, eyes, brows and lips in their colours, following the face; no face,
    a black map."""
    import matplotlib

    from huabu.engine import annotators

    path = f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg"
    portrait = Image.open(path).convert("RGB").resize((256, 300))
    padded = Image.new("RGB", (320, 300))
    padded.paste(portrait, (64, 0))
    face, moved = (annotators.run("mediapipe_face", image) for image in (portrait, padded))
    assert face.size == (256, 300) and face.mode == "RGB" and moved.size == (320, 300)
    found = lit(face)
    assert len(found) > 500
    # The face of the photograph: in its upper middle, where the mesh drew it.
    assert 70 < found[:, 0].mean() < 190 and 60 < found[:, 1].mean() < 180
    shift = lit(moved).mean(axis=0) - found.mean(axis=0)
    assert abs(shift[0] - 64) < 4 and abs(shift[1]) < 4
    pixels = np.asarray(face)
    colours = {tuple(c) for c in pixels[pixels.max(axis=2) > 0]}
    for colour in ((10, 200, 10), (10, 180, 10), (10, 200, 180), (180, 200, 10)):
        assert colour in colours  # outline, lips, left and right eye (pure, not blended)
    blank = annotators.run("mediapipe_face", Image.new("RGB", (128, 128), "grey"))
    assert not np.asarray(blank).any()


def test_openpose_parses_a_person_from_heatmaps_and_fields():
    """The parsing alone: a stick figure planted as part heatmaps and limb fields comes back
    as one person with every part where it was planted."""
    from huabu.engine.annotators.openpose import FIELDS, LIMBS, PARTS, detect_bodies

    size = 200
    joints = [
        (100, 40),
        (100, 60),
        (80, 60),
        (70, 90),
        (65, 120),
        (120, 60),
        (130, 90),
        (135, 120),
        (90, 120),
        (88, 150),
        (86, 185),
        (110, 120),
        (112, 150),
        (114, 185),
        (95, 35),
        (105, 35),
        (90, 38),
        (110, 38),
    ]
    ys, xs = np.mgrid[:size, :size]
    heatmaps = np.stack(
        [np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0) for x, y in joints]
        + [np.zeros((size, size))],
        axis=2,
    )
    fields = np.zeros((size, size, 38))
    for (a, b), (cx, cy) in zip(LIMBS, FIELDS, strict=True):
        (xa, ya), (xb, yb) = joints[a], joints[b]
        stroke = np.zeros((size, size))
        cv2.line(stroke, (xa, ya), (xb, yb), 1.0, 3)
        length = np.hypot(xb - xa, yb - ya)
        fields[:, :, cx] += stroke * (xb - xa) / length
        fields[:, :, cy] += stroke * (yb - ya) / length
    (person,) = detect_bodies(heatmaps, fields)
    assert len(person) == PARTS
    assert [tuple(map(round, point)) for point in person] == joints


def test_a_network_preprocessor_drives_a_controlnet(annotating, small):
    unit = ControlUnit(model="demo-controlnet", image=REF, preprocessor="softedge_hed")
    plain = annotating.generate(small()).images[0]
    guided = annotating.generate(small(controlnets=(unit,)), control_images=[picture(1)])
    other = annotating.generate(small(controlnets=(unit,)), control_images=[picture(2)])
    assert max_difference(plain, guided.images[0]) > 0
    assert max_difference(guided.images[0], other.images[0]) > 0


def test_loaded_annotators_are_bounded(annotated, monkeypatch):
    from huabu.engine import annotators

    monkeypatch.setattr(annotators, "MAX_LOADED", 2)
    loaded = annotators.Annotators(
        lambda name: annotated.models_dir / "annotators" / name, torch.device("cpu")
    )
    for name in ("softedge_hed", "lineart_realistic", "lineart_coarse", "lineart"):
        loaded.draw(name, picture(3))
    assert list(loaded._loaded) == ["sk_model2.pth", "sk_model.pth"]  # least recent first


def test_missing_weights_are_refused_naming_preprocessor_and_file(engine, small):
    """The shared demo library has no annotators: each network preprocessor is refused,
    naming the unit's field, the preprocessor and the file it needs."""
    for name, files in NETWORKS.items():
        unit = ControlUnit(model="demo-controlnet", image=REF, preprocessor=name)
        with pytest.raises(InvalidRequest) as caught:
            engine.generate(small(controlnets=(unit,)), control_images=[picture(1)])
        assert caught.value.param == "controlnets.0.preprocessor"
        assert repr(name) in caught.value.message
        assert all(f"models/annotators/{f}" in caught.value.message for f in files)


def test_the_listing_says_what_each_needs():
    held = {"ControlNetHED"}
    listed = {item["name"]: item for item in listing(held)}
    assert set(listed) == set(WEIGHTLESS) | set(NETWORKS) | set(PACKAGES)
    assert listed["softedge_hed"]["available"] and listed["canny"]["available"]
    assert not listed["lineart_coarse"]["available"]
    assert listed["lineart_coarse"]["needs"] == "models/annotators/sk_model2.pth"
    assert not listed["openpose"]["available"]
    assert listed["openpose_face"]["needs"] == (
        "models/annotators/body_pose_model.pth, models/annotators/facenet.pth"
    )
    assert listed["dwpose"]["needs"] == (
        "models/annotators/yolox_l.onnx, models/annotators/dw-ll_ucoco_384.onnx"
    )
    assert listed["mediapipe_face"]["available"]  # its package is installed by make install
    with pytest.raises(InvalidRequest) as caught:
        check("depth_anything", held, param="p")  # not one of spec 003's
    assert "unknown preprocessor 'depth_anything'" in caught.value.message
    check("scribble_hedsafe", held, param="p")  # runs: no error


@pytest.mark.parametrize("name", ["lineart", "dwpose"])
def test_a_damaged_annotator_file_fails_the_task_with_a_reason(annotated, tmp_path, name):
    from huabu.engine.engine import Engine
    from huabu.errors import HuabuError

    home = tmp_path
    (home / "models").mkdir()
    for kind in ("checkpoints", "controlnet"):
        (home / "models" / kind).symlink_to(annotated.models_dir / kind)
    (home / "models" / "annotators").mkdir()
    for file_name in NETWORKS[name]:  # a state dict of something else; an ONNX of nothing
        torch.save({"not": torch.zeros(1)}, home / "models" / "annotators" / file_name)
    engine = Engine(Settings(home=home, threads=2))
    unit = ControlUnit(model="demo-controlnet", image=REF, preprocessor=name)
    request = GenerationRequest(
        model="demo", prompt="a fox", width=64, height=64, steps=2, controlnets=(unit,)
    )
    with pytest.raises(HuabuError) as caught:
        engine.generate(request, control_images=[picture(1)])
    assert f"models/annotators/{NETWORKS[name][0]}" in caught.value.message
