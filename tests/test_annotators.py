"""ControlNet preprocessors that run a network, on random-weight annotator files written in the
exact layout of lllyasviel/Annotators (plain state dicts in ``.pth`` files), so the real
loading code runs: every such preprocessor makes a control map of the output's size that
depends on its input, and one whose file is missing is refused naming it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REF, max_difference
from huabu.catalog.preprocessors import NETWORKS, NOT_YET, WEIGHTLESS, check, listing
from huabu.engine.annotators import Hed, LineartGenerator
from huabu.engine.lineart_anime import AnimeLineart
from huabu.engine.mlsd import Mlsd
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
    return Settings(home=home, threads=2)


@pytest.fixture(scope="module")
def annotating(annotated):
    from huabu.engine.engine import Engine

    return Engine(annotated)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 255, (6, 6, 3)), np.ones((12, 12, 1))).astype(np.uint8)
    return Image.fromarray(base[:64, :72])


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_each_network_preprocessor_maps_its_input(annotating, name):
    from huabu.engine import preprocessors

    maps = [preprocessors.run(name, picture(seed), annotators=annotating.annotators)
            for seed in (1, 2)]  # fmt: skip
    for control_map in maps:
        assert control_map.size == (72, 64) and control_map.mode == "RGB"
        assert np.asarray(control_map).std() > 0  # not a flat field
    assert max_difference(*maps) > 0  # the map depends on the input
    if name.startswith("scribble"):  # scribbles are black and white
        assert set(np.unique(np.asarray(maps[0]))) <= {0, 255}


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
        assert repr(name) in caught.value.message and files[0] in caught.value.message


def test_the_listing_says_what_each_needs():
    held = {"ControlNetHED"}
    listed = {item["name"]: item for item in listing(held)}
    assert set(listed) == set(WEIGHTLESS) | set(NETWORKS) | set(NOT_YET)
    assert listed["softedge_hed"]["available"] and listed["canny"]["available"]
    assert not listed["lineart_coarse"]["available"]
    assert listed["lineart_coarse"]["needs"] == "models/annotators/sk_model2.pth"
    assert not listed["openpose"]["available"]
    with pytest.raises(InvalidRequest) as caught:
        check("openpose", held, param="p")
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
