"""LoRAs on the cached pipeline: applied for one request, gone for the next."""

import pytest
import torch

from helpers import max_difference
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, LoraRef

LORA = (LoraRef(name="demo-lora", weight=1.0),)


@pytest.mark.parametrize(  # diffusers and k-diffusion paths (the latter in make test)
    "sampler", ["Euler", pytest.param("DPM fast", marks=pytest.mark.slow)]
)
def test_lora_applies_and_leaves_no_trace(engine, small, sampler):
    base = engine.generate(small(sampler=sampler)).images[0]
    styled = engine.generate(small(sampler=sampler, loras=LORA)).images[0]
    off = engine.generate(
        small(sampler=sampler, loras=(LoraRef(name="demo-lora", weight=0.0),))
    ).images[0]
    after = engine.generate(small(sampler=sampler)).images[0]
    assert max_difference(base, styled) > 8
    assert max_difference(base, off) == 0  # strength 0 is the base model, bit for bit
    assert max_difference(base, after) == 0  # nothing leaks into the next request


def test_lora_strength_scales_the_effect(engine, small):
    base = engine.generate(small()).images[0]
    half = engine.generate(small(loras=(LoraRef(name="demo-lora", weight=0.5),))).images[0]
    full = engine.generate(small(loras=LORA)).images[0]
    assert 0 < max_difference(base, half) < max_difference(base, full)


def test_lora_is_the_same_on_both_checkpoint_layouts(engine, small):
    folder = engine.generate(small(loras=LORA)).images[0]
    single = engine.generate(small(model="demo-single", loras=LORA)).images[0]
    assert max_difference(folder, single) == 0


def test_infotext_records_the_loras(engine, small):
    result = engine.generate(small(loras=(LoraRef(name="demo-lora", weight=0.7),)))
    assert "LoRAs: demo-lora:0.7" in result.infotexts[0]


def test_unknown_lora_and_ranges(engine, small):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(small(loras=(LoraRef(name="nope"),)))
    assert caught.value.param == "loras.0.name" and "demo-lora" in caught.value.message
    for bad in (
        {"loras": [{"name": "demo-lora", "weight": 5}]},
        {"loras": [{"name": "demo-lora"}] * 6},
        {"loras": [{"name": ""}]},
    ):
        with pytest.raises(InvalidRequest) as caught:
            GenerationRequest.parse({"model": "demo"} | bad)
        assert caught.value.param.startswith("loras")


def test_kohya_layout_gives_the_same_images(engine, small, settings):
    """sd-scripts (kohya) names: lora_unet_<module path with _>.lora_down/lora_up/alpha."""
    from safetensors.torch import load_file, save_file

    diffusers_state = load_file(settings.models_dir / "loras" / "demo-lora.safetensors")
    kohya = {}
    for key, tensor in diffusers_state.items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        kohya[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor
        kohya[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0 if kind.startswith("A") else 1]))
    save_file(kohya, str(settings.models_dir / "loras" / "demo-lora-kohya.safetensors"))
    ours = engine.generate(small(loras=LORA)).images[0]
    theirs = engine.generate(small(loras=(LoraRef(name="demo-lora-kohya", weight=1.0),))).images[0]
    assert max_difference(ours, theirs) <= 1
