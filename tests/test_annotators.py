"""ControlNet preprocessors that run a network, on random-weight annotator files written in the
exact layout of lllyasviel/Annotators (plain state dicts in ``.pth`` files), so the real
loading code runs: every such preprocessor makes a control map of the output's size that
depends on its input, and one whose file is missing is refused naming it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REF, max_difference
from huabu.catalog.preprocessors import NETWORKS, NOT_YET, WEIGHTLESS, check, listing
from huabu.engine.annotators import Hed, LineartGenerator
from huabu.engine.lineart_anime import AnimeLineart
from huabu.engine.mlsd import Mlsd
from huabu.engine.openpose import COLOURS, BodyNet, face_net, hand_net
from huabu.engine.pidinet import PiDiNet
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
    for file_name, network in (("ControlNetHED.pth", Hed()), ("sk_model.pth", LineartGenerator()),
                               ("sk_model2.pth", LineartGenerator())):  # fmt: skip
        if isinstance(network, Hed):
            with torch.no_grad():  # random edges strong enough to cross scribble's threshold
                network.norm.normal_()
                for block in (network.block1, network.block2, network.block3, network.block4,
                              network.block5):  # fmt: skip
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
    for file_name, network in (("body_pose_model.pth", routed_body()),
                               ("hand_pose_model.pth", routed_keypoints(hand_net(), 22)),
                               ("facenet.pth", routed_keypoints(face_net(), 71))):  # fmt: skip
        torch.save({k: v.half() for k, v in network.state_dict().items()}, folder / file_name)
    return Settings(home=home, threads=2)


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
    from huabu.engine import openpose

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


@pytest.mark.parametrize(
    "name", sorted(n for n in NETWORKS if not n.startswith("openpose")) + ["openpose_full"]
)  # the other openpose variants: in test_openpose_draws_bodies_hands_and_faces_as_asked
def test_each_network_preprocessor_maps_its_input(annotating, name, quick_pose):
    from huabu.engine import preprocessors

    pose = name.startswith("openpose")
    images = [figure(shift) if pose else picture(seed) for seed, shift in ((1, 0), (2, 40))]
    maps = [preprocessors.run(name, image, annotators=annotating.annotators) for image in images]
    for image, control_map in zip(images, maps, strict=True):
        assert control_map.size == image.size and control_map.mode == "RGB"
        assert np.asarray(control_map).std() > 0  # not a flat field
    assert max_difference(*maps) > 0  # the map depends on the input
    if name.startswith("scribble"):  # scribbles are black and white
        assert set(np.unique(np.asarray(maps[0]))) <= {0, 255}


def test_openpose_draws_bodies_hands_and_faces_as_asked(annotating, quick_pose):
    from huabu.engine import preprocessors

    def pose(name: str) -> np.ndarray:
        return np.asarray(preprocessors.run(name, figure(0), annotators=annotating.annotators))

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


def test_openpose_parses_a_person_from_heatmaps_and_fields():
    """The parsing alone: a stick figure planted as part heatmaps and limb fields comes back
    as one person with every part where it was planted."""
    from huabu.engine.openpose import FIELDS, LIMBS, PARTS, detect_bodies

    size = 200
    joints = [(100, 40), (100, 60), (80, 60), (70, 90), (65, 120), (120, 60), (130, 90),
              (135, 120), (90, 120), (88, 150), (86, 185), (110, 120), (112, 150), (114, 185),
              (95, 35), (105, 35), (90, 38), (110, 38)]  # fmt: skip
    ys, xs = np.mgrid[:size, :size]
    heatmaps = np.stack([np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 18.0) for x, y in joints]
                        + [np.zeros((size, size))], axis=2)  # fmt: skip
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
    loaded = annotators.Annotators(lambda name: annotated.models_dir / "annotators" / name,
                                   torch.device("cpu"))  # fmt: skip
    for name in ("softedge_hed", "lineart_realistic", "lineart_coarse", "lineart"):
        loaded.run(name, picture(3))
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
    assert set(listed) == set(WEIGHTLESS) | set(NETWORKS) | set(NOT_YET)
    assert listed["softedge_hed"]["available"] and listed["canny"]["available"]
    assert not listed["lineart_coarse"]["available"]
    assert listed["lineart_coarse"]["needs"] == "models/annotators/sk_model2.pth"
    assert not listed["openpose"]["available"]
    assert listed["openpose_face"]["needs"] == ("models/annotators/body_pose_model.pth, "
                                                "models/annotators/facenet.pth")  # fmt: skip
    with pytest.raises(InvalidRequest) as caught:
        check("dwpose", held, param="p")
    assert "not supported by this server yet" in caught.value.message
    check("scribble_hedsafe", held, param="p")  # runs: no error


def test_a_damaged_annotator_file_fails_the_task_with_a_reason(annotated, tmp_path):
    from huabu.engine.engine import Engine
    from huabu.errors import HuabuError

    home = tmp_path
    (home / "models").mkdir()
    for kind in ("checkpoints", "controlnet"):
        (home / "models" / kind).symlink_to(annotated.models_dir / kind)
    (home / "models" / "annotators").mkdir()
    torch.save({"not": torch.zeros(1)}, home / "models" / "annotators" / "sk_model.pth")
    engine = Engine(Settings(home=home, threads=2))
    unit = ControlUnit(model="demo-controlnet", image=REF, preprocessor="lineart")
    request = GenerationRequest(model="demo", prompt="a fox", width=64, height=64, steps=2,
                                controlnets=(unit,))  # fmt: skip
    with pytest.raises(HuabuError) as caught:
        engine.generate(request, control_images=[picture(1)])
    assert "models/annotators/sk_model.pth" in caught.value.message
