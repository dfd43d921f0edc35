"""The LoRA trainer on the demo model: it learns something, writes a kohya file that the engine
(and A1111, ComfyUI) can load, and stops cleanly when cancelled."""

import uuid

import pytest
from PIL import Image
from safetensors import safe_open

from helpers import max_difference
from huabu.catalog.library import ModelLibrary, private_name
from huabu.errors import Cancelled, InvalidRequest
from huabu.native import LoraRef
from huabu.training.trainer import TrainingJob, train_lora

REDS = tuple(Image.new("RGB", (80, 64), c) for c in [(250, 20, 20), (230, 40, 30), (240, 10, 60)])


def job(name: str, **changes) -> TrainingJob:
    base = dict(
        name=name,
        base_model="demo",
        images=REDS,
        captions=("sks fox",) * 3,
        steps=20,
        resolution=64,
        learning_rate=1e-3,
    )
    return TrainingJob(**(base | changes))


@pytest.mark.slow
def test_trained_lora_is_a_kohya_file_the_engine_uses(settings, engine, small, lora_path):
    lora_path("trained-fox")
    steps = []
    result = train_lora(settings, job("trained-fox"), on_progress=lambda s, t, _: steps.append(s))
    assert steps == list(range(1, 21)) and len(result.losses) == 20
    with safe_open(str(result.path), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert all(key.startswith("lora_unet_") for key in keys)
    assert any(key.endswith(".lora_down.weight") for key in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_output_name"] == "trained-fox"
    base = engine.generate(small(prompt="sks fox")).images[0]
    trained = engine.generate(small(prompt="sks fox", loras=(LoraRef(name="trained-fox"),)))
    assert max_difference(base, trained.images[0]) > 0  # it learned something


def test_bad_jobs_are_refused_before_training(settings, lora_path):
    with pytest.raises(InvalidRequest) as caught:
        train_lora(settings, job("x", images=(), captions=()))
    assert caught.value.param == "datasets"
    with pytest.raises(InvalidRequest) as caught:
        train_lora(settings, job("x", base_model="nope"))
    assert caught.value.param == "base_model"
    with pytest.raises(InvalidRequest) as caught:
        train_lora(settings, job("demo-lora"))  # the name is taken
    assert caught.value.param == "name"


def test_cancelled_training_writes_nothing(settings, lora_path):
    lora_path("never")
    seen = []
    with pytest.raises(Cancelled):
        train_lora(
            settings,
            job("never"),
            on_progress=lambda s, t, _: seen.append(s),
            should_cancel=lambda: len(seen) >= 5,
        )
    assert len(seen) == 5
    assert not (settings.models_dir / "loras" / "never.safetensors").exists()


def test_a_private_lora_is_found_by_its_qualified_name_only(settings, lora_path):
    name = private_name(uuid.uuid4(), "mine")
    lora_path(name)
    train_lora(settings, job(name, steps=2))
    library = ModelLibrary(settings)
    assert not any("mine" in listed or "@" in listed for listed in library.names("loras"))
    assert library.find("loras", name).path.is_file()
    with pytest.raises(InvalidRequest):  # another owner's folder
        library.find("loras", f"@{'0' * 32}/mine")
    with pytest.raises(InvalidRequest):  # not an owner folder at all
        library.find("loras", "@../mine")
