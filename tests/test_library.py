"""The model library: families detected from keys, configs derived from shapes."""

import json

from huabu.catalog.architectures import Architecture, detect_architecture
from huabu.catalog.checkpoints import CheckpointHeader
from huabu.catalog.library import ModelLibrary
from huabu.engine.single_file import derive_configs


def test_families_are_detected_from_key_names():
    assert detect_architecture({"cond_stage_model.transformer.text_model.x"}) is Architecture.SD1
    assert detect_architecture({"cond_stage_model.model.transformer.x"}) is Architecture.SD2
    assert detect_architecture({"conditioner.embedders.1.model.x"}) is Architecture.SDXL
    refiner = {"conditioner.embedders.0.model.transformer.x"}
    assert detect_architecture(refiner) is Architecture.SDXL_REFINER
    assert detect_architecture({"model.diffusion_model.x"}) is None


def test_library_lists_both_demo_layouts(settings):
    entries = {e.name: e for e in ModelLibrary(settings).entries("checkpoints")}
    assert entries["demo"].layout == "diffusers"
    assert entries["demo-single"].layout == "single-file"
    assert entries["demo"].architecture is entries["demo-single"].architecture is Architecture.SD1
    assert entries["demo-v"].architecture is Architecture.SD2
    assert entries["demo-xl-refiner"].architecture is Architecture.SDXL_REFINER
    split = {"demo-flux-single", "demo-flux-gguf"}  # transformers alone: the rest is beside
    assert all(e.size_bytes > 1_000_000 for e in entries.values() if e.name not in split)
    # Q8_0: about a byte per weight, against fp32's four.
    assert entries["demo-flux-gguf"].size_bytes < entries["demo-flux-single"].size_bytes / 3


def test_configs_derived_from_shapes_match_the_folder(settings):
    checkpoints = settings.models_dir / "checkpoints"
    header = CheckpointHeader.read(checkpoints / "demo-single.safetensors")
    derived = derive_configs(header, Architecture.SD1)
    for component in ("unet", "vae", "text_encoder"):
        actual = json.loads((checkpoints / "demo" / component / "config.json").read_text())
        for key, value in derived[component].items():
            # sample_size only sets a default output size (huabu always passes one): not in
            # the tensors, so not derived.
            if key.startswith("_") or key not in actual or key in ("architectures", "sample_size"):
                continue
            assert actual[key] == value or (
                isinstance(value, list) and list(actual[key]) == value
            ), (component, key, actual[key], value)


def test_sidecar_overrides_apply(settings, tmp_path):
    header = CheckpointHeader.read(settings.models_dir / "checkpoints" / "demo-single.safetensors")
    sidecar = tmp_path / "demo-single.json"
    sidecar.write_text(json.dumps({"scheduler": {"prediction_type": "v_prediction"}}))
    assert derive_configs(header, Architecture.SD1, sidecar)["scheduler"]["prediction_type"] == (
        "v_prediction"
    )
