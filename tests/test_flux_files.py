"""FLUX.1 as it is downloaded: a transformer alone (BFL's layout, fp8, or GGUF) with its CLIP-L,
T5 and VAE in ComfyUI's split layout. demo-flux-single and demo-flux-gguf are demo-flux's
weights written that way (``demos.flux_files``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import loaded, max_difference, pixels
from huabu.catalog.architectures import Architecture
from huabu.catalog.split_files import transformer_architecture
from huabu.demos.flux import DEMO_FLUX, DEMO_FLUX_LORA
from huabu.demos.flux_files import DEMO_FLUX_GGUF, DEMO_FLUX_SINGLE, PARTS
from huabu.engine.split_files import _weights, bfl_to_diffusers
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, LoraRef
from test_service import submit, wait_finished

BASE = {"prompt": "a red fox in the snow", "width": 64, "height": 64, "steps": 4, "seed": 7}


def generate(engine, model: str, **changes):
    return engine.generate(GenerationRequest(**(BASE | {"model": model} | changes)))


def test_split_files_are_listed_as_flux1(engine):
    for name in (DEMO_FLUX_SINGLE, DEMO_FLUX_GGUF):
        entry = engine.library.find("checkpoints", name)
        assert (entry.architecture, entry.layout) == (Architecture.FLUX1, "single-file")
    assert engine.library.find("checkpoints", DEMO_FLUX_GGUF).file_name.endswith(".gguf")


def test_the_transformer_alone_gives_the_folders_image(engine):
    folder = generate(engine, DEMO_FLUX)
    single = generate(engine, DEMO_FLUX_SINGLE)
    assert max_difference(folder.images[0], single.images[0]) <= 1
    assert pixels(single.images[0]).std() > 5
    other = generate(engine, DEMO_FLUX_SINGLE, prompt="a blue whale at sea")
    assert max_difference(other.images[0], single.images[0]) > 16
    # FLUX.1's LoRAs apply to it as to the folder.
    lora = (LoraRef(name=DEMO_FLUX_LORA),)
    with_lora = generate(engine, DEMO_FLUX_SINGLE, loras=lora)
    assert max_difference(with_lora.images[0], single.images[0]) > 16
    folder_lora = generate(engine, DEMO_FLUX, loras=lora)
    assert max_difference(with_lora.images[0], folder_lora.images[0]) <= 1


def test_gguf_stays_quantized_and_computes_its_weights(engine, settings):
    """The GGUF transformer keeps its Q8_0 matrices in memory (a quarter of fp32's bytes) and
    its image is what diffusers gives with those weights dequantized; Q8_0 keeps it close to
    the full-precision image."""
    import gguf
    from diffusers import FluxPipeline
    from diffusers.quantizers.gguf.utils import GGUFParameter

    model = loaded(engine, DEMO_FLUX_GGUF)
    weight = model.txt2img.transformer.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, GGUFParameter)
    assert weight.quant_type == gguf.GGMLQuantizationType.Q8_0
    made = generate(engine, DEMO_FLUX_GGUF)
    reader = gguf.GGUFReader(settings.models_dir / "checkpoints" / f"{DEMO_FLUX_GGUF}.gguf")
    dequantized = {
        t.name: torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        for t in reader.tensors
    }
    pipe = FluxPipeline.from_pretrained(
        settings.models_dir / "checkpoints" / DEMO_FLUX, local_files_only=True
    )
    pipe.transformer.load_state_dict(bfl_to_diffusers(dequantized))
    pipe.set_progress_bar_config(disable=True)
    bare = pipe(
        BASE["prompt"],
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=3.5,
        generator=[torch.Generator().manual_seed(7)],
    ).images[0]
    assert max_difference(made.images[0], bare) <= 1
    full = generate(engine, DEMO_FLUX).images[0]
    assert 0 < np.abs(pixels(made.images[0]).astype(int) - pixels(full)).mean() < 2


def library_with(tmp_path, settings, *names: str):
    """A library with demo-flux-single's transformer and only ``names`` of its parts."""
    from huabu.engine.engine import Engine
    from huabu.settings import Settings

    source = settings.models_dir
    for relative in (f"checkpoints/{DEMO_FLUX_SINGLE}.safetensors", *names):
        target = tmp_path / "models" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, target)
    return Engine(Settings(home=tmp_path, threads=2))


def test_a_missing_part_is_refused_naming_the_file_and_where(tmp_path, settings):
    engine = library_with(tmp_path, settings, PARTS["text_encoder"], PARTS["vae"])
    with pytest.raises(InvalidRequest) as refused:
        generate(engine, DEMO_FLUX_SINGLE)
    assert refused.value.param == "model"
    assert "T5-XXL text encoder" in str(refused.value)
    assert "models/text_encoders/demo-flux-t5xxl.safetensors" in str(refused.value)
    # Still listed (with its family), so the operator sees what is there.
    assert DEMO_FLUX_SINGLE in engine.library.names("checkpoints")


def test_fp8_files_and_comfyui_default_names(tmp_path, settings, engine):
    """A transformer stored in float8 (as flux1-dev-fp8.safetensors is) and a T5 in ComfyUI's
    "scaled fp8" form load; parts under ComfyUI's default names are found without a sidecar."""
    from safetensors.torch import load_file, save_file

    from huabu.catalog.checkpoints import METADATA_KEY

    split = library_with(tmp_path, settings)
    models = tmp_path / "models"
    checkpoint = models / "checkpoints" / f"{DEMO_FLUX_SINGLE}.safetensors"
    state = load_file(str(checkpoint))
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in state.items()}
    metadata = {METADATA_KEY: json.dumps({"transformer": {"axes_dims_rope": [4, 4, 8]}})}
    save_file(fp8, str(checkpoint), metadata=metadata)  # no "files": the default names
    (models / "text_encoders").mkdir()
    (models / "vae").mkdir()
    for component, default in (("text_encoder", "text_encoders/clip_l.safetensors"),
                               ("vae", "vae/ae.safetensors")):  # fmt: skip
        shutil.copyfile(settings.models_dir / PARTS[component], models / default)
    t5 = load_file(str(settings.models_dir / PARTS["text_encoder_2"]))
    scaled = {"scaled_fp8": torch.zeros(2, dtype=torch.float8_e4m3fn)}
    for key, value in t5.items():
        if key.endswith(".weight") and value.ndim == 2 and key != "shared.weight":
            scale = value.abs().max() / 448
            scaled[key] = (value / scale).to(torch.float8_e4m3fn)
            scaled[key.removesuffix("weight") + "scale_weight"] = scale.reshape(1)
        else:
            scaled[key] = value
    t5_file = models / "text_encoders" / "t5xxl_fp8_e4m3fn.safetensors"
    save_file(scaled, str(t5_file))
    restored = _weights(t5_file, torch.float32)
    assert "scaled_fp8" not in restored
    assert all(not k.endswith("scale_weight") for k in restored)
    query = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert torch.allclose(restored[query], t5[query], atol=t5[query].abs().max().item() / 8)
    made = generate(split, DEMO_FLUX_SINGLE)
    full = generate(engine, DEMO_FLUX).images[0]
    # fp8's rounding moves it a little
    assert 0 < np.abs(pixels(made.images[0]).astype(int) - pixels(full)).mean() < 6
    assert pixels(made.images[0]).std() > 5


def test_the_converter_is_diffusers_own_at_flux1_width():
    """BFL → diffusers names and splits as diffusers' converter does at FLUX.1's real widths
    (3,072 hidden, 12,288 MLP; one column each, so that the test stays small)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    generator = torch.Generator().manual_seed(0)
    shapes = {"img_in.weight": (3072, 1), "img_in.bias": (3072,), "txt_in.weight": (3072, 1),
              "txt_in.bias": (3072,), "final_layer.linear.weight": (1, 3072),
              "final_layer.linear.bias": (1,), "final_layer.adaLN_modulation.1.weight": (6144, 1),
              "final_layer.adaLN_modulation.1.bias": (6144,)}  # fmt: skip
    for embedder in ("time_in", "vector_in", "guidance_in"):
        for layer in ("in_layer", "out_layer"):
            shapes |= {f"{embedder}.{layer}.weight": (3072, 1), f"{embedder}.{layer}.bias": (3072,)}
    block = "double_blocks.0."
    for stream in ("img", "txt"):
        shapes |= {f"{block}{stream}_mod.lin.weight": (18432, 1),
                   f"{block}{stream}_mod.lin.bias": (18432,),
                   f"{block}{stream}_attn.qkv.weight": (9216, 1),
                   f"{block}{stream}_attn.qkv.bias": (9216,),
                   f"{block}{stream}_attn.norm.query_norm.scale": (128,),
                   f"{block}{stream}_attn.norm.key_norm.scale": (128,),
                   f"{block}{stream}_attn.proj.weight": (3072, 1),
                   f"{block}{stream}_attn.proj.bias": (3072,),
                   f"{block}{stream}_mlp.0.weight": (12288, 1),
                   f"{block}{stream}_mlp.0.bias": (12288,),
                   f"{block}{stream}_mlp.2.weight": (3072, 1),
                   f"{block}{stream}_mlp.2.bias": (3072,)}  # fmt: skip
    single = "single_blocks.0."
    shapes |= {f"{single}modulation.lin.weight": (9216, 1), f"{single}modulation.lin.bias": (9216,),
               f"{single}linear1.weight": (21504, 1), f"{single}linear1.bias": (21504,),
               f"{single}linear2.weight": (3072, 1), f"{single}linear2.bias": (3072,),
               f"{single}norm.query_norm.scale": (128,),
               f"{single}norm.key_norm.scale": (128,)}  # fmt: skip
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    ours = bfl_to_diffusers({f"model.diffusion_model.{k}": v for k, v in state.items()})
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_family_from_the_keys_and_kontext_from_the_name():
    dev = {"double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"}
    assert transformer_architecture(dev, "flux1-dev.safetensors") is Architecture.FLUX1
    assert transformer_architecture(dev, "flux1-kontext-dev.gguf") is Architecture.FLUX1_KONTEXT
    schnell = {"model.diffusion_model.double_blocks.0.img_attn.qkv.weight"}
    assert transformer_architecture(schnell, "flux1-schnell.safetensors") is (
        Architecture.FLUX1_SCHNELL
    )
    assert transformer_architecture({"model.diffusion_model.input_blocks.0.0.weight"}, "x") is None


def test_split_flux_over_http(server, accounts):
    key = accounts.create_key(accounts.add_user("split@example.com", "password123").id)
    with server.client(key) as client:
        listed = {m["name"]: m for m in client.get("/huabu/v1/models").json()["data"]}
        assert listed[DEMO_FLUX_GGUF]["architecture"] == "flux1"
        assert listed[DEMO_FLUX_SINGLE]["architecture"] == "flux1"
        task = submit(client, BASE | {"model": DEMO_FLUX_GGUF, "steps": 3})
        task = wait_finished(client, task["id"])
        assert task["state"] == "succeeded", task
        assert task["request"]["distilled_guidance"] == 3.5
