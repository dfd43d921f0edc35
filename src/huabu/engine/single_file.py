"""Loading single-file checkpoints offline: family detection and config derivation.

See :mod:`huabu.catalog.architectures` for the why. The derived configs are written once into
``$HUABU_HOME/cache/configs/<family>-<hash>/`` (a diffusers config folder with tokenizer files
and no weights) and handed to ``from_single_file(config=...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from huabu.catalog.architectures import Architecture, Config, reference_config
from huabu.catalog.checkpoints import CheckpointHeader
from huabu.errors import ModelUnavailable

_UNET = "model.diffusion_model."
_VAE = "first_stage_model."


def indices(shapes: dict[str, Any], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m[1]) for key in shapes if (m := pattern.match(key))})


def _derive_unet(shapes: dict[str, tuple[int, ...]], unet: Config) -> None:
    blocks = indices(shapes, _UNET + "input_blocks.")
    downsamplers = [i for i in blocks if f"{_UNET}input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsamplers) + 1
    per_level = (len(blocks) - 1 - len(downsamplers)) // levels
    channels, has_attention, depth = [], [], []
    for level in range(levels):
        first = f"{_UNET}input_blocks.{level * (per_level + 1) + 1}."
        channels.append(shapes[first + "0.out_layers.3.weight"][0])
        has_attention.append(f"{first}1.proj_in.weight" in shapes)
        depth.append(len(indices(shapes, first + "1.transformer_blocks.")) or 1)
    unet["in_channels"] = shapes[_UNET + "input_blocks.0.0.weight"][1]
    unet["out_channels"] = shapes[_UNET + "out.2.weight"][0]
    unet["block_out_channels"] = channels
    unet["layers_per_block"] = per_level
    unet["down_block_types"] = [
        "CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention
    ]
    unet["up_block_types"] = [
        "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)
    ]
    cross = next(v for k, v in shapes.items() if k.endswith("attn2.to_k.weight"))
    unet["cross_attention_dim"] = cross[1]
    proj_in = next(v for k, v in shapes.items() if k.endswith(".proj_in.weight"))
    unet["use_linear_projection"] = len(proj_in) == 2
    if isinstance(unet["attention_head_dim"], list):  # SD 2 / SDXL: 64-wide heads per level
        unet["attention_head_dim"] = [max(c // 64, 1) for c in channels]
    if "transformer_layers_per_block" in unet or max(depth) > 1:
        unet["transformer_layers_per_block"] = depth
    if (label := shapes.get(_UNET + "label_emb.0.0.weight")) is not None:
        unet["projection_class_embeddings_input_dim"] = label[1]


def derive_vae(shapes: dict[str, tuple[int, ...]], vae: Config, prefix: str = _VAE) -> None:
    levels = indices(shapes, prefix + "encoder.down.")
    per_level = len(indices(shapes, prefix + "encoder.down.0.block."))
    vae["block_out_channels"] = [
        shapes[f"{prefix}encoder.down.{i}.block.{per_level - 1}.conv2.weight"][0] for i in levels
    ]
    vae["layers_per_block"] = per_level
    vae["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    vae["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    vae["latent_channels"] = shapes[prefix + "post_quant_conv.weight"][0]


def derive_vae_config(header: CheckpointHeader) -> Config:
    """The AutoencoderKL config of a standalone VAE file (A1111 layout, with or without the
    ``first_stage_model.`` prefix)."""
    prefix = _VAE if any(k.startswith(_VAE) for k in header.shapes) else ""
    vae = reference_config(Architecture.SD1)["vae"]
    try:
        derive_vae(header.shapes, vae, prefix)
    except (KeyError, IndexError) as exc:
        raise ModelUnavailable(f"not an SD VAE file (missing {exc})") from None
    return vae


def derive_clip(shapes: dict[str, tuple[int, ...]], prefix: str, encoder: Config) -> None:
    token = shapes[prefix + "embeddings.token_embedding.weight"]
    hidden = token[1]
    if hidden != encoder["hidden_size"]:
        encoder["num_attention_heads"] = max(hidden // 64, 1)
    encoder["vocab_size"], encoder["hidden_size"] = token
    encoder["projection_dim"] = hidden  # CLIP-L's projection is as wide as its hidden state
    encoder["num_hidden_layers"] = len(indices(shapes, prefix + "encoder.layers."))
    encoder["intermediate_size"] = shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0]
    encoder["max_position_embeddings"] = shapes[prefix + "embeddings.position_embedding.weight"][0]


def _derive_open_clip(shapes: dict[str, tuple[int, ...]], prefix: str, encoder: Config) -> None:
    """An OpenCLIP text encoder with its projection (SDXL's second), in OpenCLIP's layout."""
    vocab, hidden = shapes[prefix + "token_embedding.weight"]
    if hidden != encoder["hidden_size"]:
        encoder["num_attention_heads"] = max(hidden // 64, 1)
    encoder["vocab_size"], encoder["hidden_size"] = vocab, hidden
    encoder["projection_dim"] = shapes[prefix + "text_projection"][1]
    encoder["num_hidden_layers"] = len(indices(shapes, prefix + "transformer.resblocks."))
    encoder["intermediate_size"] = shapes[prefix + "transformer.resblocks.0.mlp.c_fc.weight"][0]
    encoder["max_position_embeddings"] = shapes[prefix + "positional_embedding"][0]


def derive_configs(
    header: CheckpointHeader, architecture: Architecture, sidecar: Path | None = None
) -> dict[str, Config]:
    """The diffusers configs that fit this checkpoint's tensors."""
    configs = reference_config(architecture)
    try:
        _derive_unet(header.shapes, configs["unet"])
        derive_vae(header.shapes, configs["vae"])
        if architecture is Architecture.SD1:
            prefix = "cond_stage_model.transformer.text_model."
            derive_clip(header.shapes, prefix, configs["text_encoder"])
        elif architecture.is_sdxl:
            # SDXL: CLIP-L as embedder 0, OpenCLIP as 1; its refiner: OpenCLIP alone, as 0.
            refiner = architecture is Architecture.SDXL_REFINER
            if not refiner:
                prefix = "conditioner.embedders.0.transformer.text_model."
                derive_clip(header.shapes, prefix, configs["text_encoder"])
            second = configs["text_encoder_2"]
            prefix = f"conditioner.embedders.{0 if refiner else 1}.model."
            _derive_open_clip(header.shapes, prefix, second)
            # The UNet's extra embedding takes the pooled text and six numbers (original size,
            # crop, target size), or the refiner's five (an aesthetic score for the target).
            unet = configs["unet"]
            extra = unet["projection_class_embeddings_input_dim"] - second["projection_dim"]
            unet["addition_time_embed_dim"] = extra // (5 if refiner else 6)
    except (KeyError, StopIteration, IndexError) as exc:
        raise ModelUnavailable(
            f"checkpoint looks like {architecture.label} but lacks expected tensors ({exc})"
        ) from None
    for component, values in header.overrides(sidecar).items():
        if component not in configs:
            raise ModelUnavailable(f"config override for unknown component {component!r}")
        configs[component].update(values)
    return configs


def tokenizer_files() -> Path:
    """The shipped CLIP BPE vocabulary (vocab.json, merges.txt), shared by every family."""
    return Path(str(resources.files("huabu.engine") / "configs" / "clip_tokenizer"))


def clip_tokenizer(pad: str = "<|endoftext|>") -> Any:
    """A CLIP tokenizer over the shipped vocabulary (OpenCLIP-trained encoders pad with "!")."""
    from transformers import CLIPTokenizer

    files = tokenizer_files()
    return CLIPTokenizer(
        vocab=str(files / "vocab.json"),
        merges=str(files / "merges.txt"),
        model_max_length=77,
        pad_token=pad,
    )


def write_config_folder(configs: dict[str, Config], destination: Path) -> None:
    """Write ``configs`` as a diffusers folder (no weights) at ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for component, config in configs.items():
        if component == "model_index":
            (destination / "model_index.json").write_text(json.dumps(config, indent=2))
            continue
        folder = destination / component
        folder.mkdir(exist_ok=True)
        if component.startswith("tokenizer"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(tokenizer_files() / name, folder / name)
            (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
        elif component == "scheduler":
            (folder / "scheduler_config.json").write_text(json.dumps(config, indent=2))
        else:
            (folder / "config.json").write_text(json.dumps(config, indent=2))


def config_folder(configs: dict[str, Config], architecture: Architecture, cache: Path) -> Path:
    """A cached config folder for ``configs``, written atomically on first use."""
    digest = hashlib.sha256(json.dumps(configs, sort_keys=True).encode()).hexdigest()[:16]
    destination = cache / "configs" / f"{architecture.value}-{digest}"
    if destination.is_dir():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".staging-"))
    write_config_folder(configs, staging)
    try:
        os.rename(staging, destination)
    except OSError:  # another process won the race; its folder is identical
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def single_file_controlnet(path: Path, name: str, unet: Any) -> Any:
    """A ControlNet in one ``.safetensors`` file, as a diffusers ControlNet with ``unet``'s
    structure: A1111's downloads (``control_model.*`` or bare LDM keys, SD 1.x/2.x and SDXL),
    or diffusers' own names in one file (how many SDXL ControlNets are shared, e.g.
    ``diffusers_xl_canny_full.safetensors``). A ControlNet is a copy of its base's encoder,
    so the base model gives the config; the file's hint-block shapes and transformer depths
    give the rest (the base's weights are not copied: the file has its own, and a base with
    LoRAs loaded has extra layers that would not fit)."""
    from diffusers import ControlNetModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise ModelUnavailable(f"ControlNet {name!r} is not a readable safetensors file") from exc
    if "controlnet_cond_embedding.conv_in.weight" in state:
        converted = state
    else:
        converted = _controlnet_from_ldm(state, name, unet.config.layers_per_block)
    embedding = "controlnet_cond_embedding."
    blocks = indices(converted, embedding + "blocks.")
    widths = [converted[f"{embedding}blocks.{i}.weight"].shape[0] for i in blocks[1::2]]
    channels = (converted[embedding + "conv_in.weight"].shape[0], *widths)
    try:
        model = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=channels, load_weights_from_unet=False
        )
        depths = _transformer_depths(converted, dict(model.config))
        if depths is not None:
            model = ControlNetModel.from_config(
                {**dict(model.config), "transformer_layers_per_block": depths}
            )
        model.load_state_dict(converted, strict=True)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise ModelUnavailable(
            f"ControlNet {name!r} does not fit this checkpoint (made for another model family?)"
        ) from exc
    return model


def _controlnet_from_ldm(state: dict[str, Any], name: str, per_level: int) -> dict[str, Any]:
    """An A1111-layout ControlNet's weights under diffusers' names (SDXL's ``label_emb``, the
    pooled-text and size embedding, included)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    bare = {key.removeprefix("control_model."): value for key, value in state.items()}
    hint_out = sorted(
        (int(key.split(".")[1]), value.shape[0])
        for key, value in bare.items()
        if key.startswith("input_hint_block.") and key.endswith(".weight")
    )
    if "time_embed.0.weight" not in bare or len(hint_out) < 2:
        raise ModelUnavailable(
            f"ControlNet {name!r} is not a ControlNet in A1111's layout (control_model.*) or "
            "diffusers' (controlnet_cond_embedding.*)"
        )
    config = {
        "layers_per_block": per_level,
        "conditioning_embedding_out_channels": tuple(o for _, o in hint_out[:-1])[0::2],
    }
    try:
        converted = convert_controlnet_checkpoint(bare, config)
    except (KeyError, ValueError, IndexError) as exc:
        raise ModelUnavailable(f"ControlNet {name!r} is damaged ({exc})") from exc
    for ldm, hf in (
        ("label_emb.0.0.", "add_embedding.linear_1."),
        ("label_emb.0.2.", "add_embedding.linear_2."),
    ):
        for part in ("weight", "bias"):
            if ldm + part in bare:
                converted[hf + part] = bare[ldm + part]
    return converted


def _transformer_depths(state: dict[str, Any], config: dict[str, Any]) -> list[int] | None:
    """The transformer layers per down block the file has, where they differ from the base's
    (SDXL's "mid" and "small" ControlNets are shallower than their base); None if not."""
    depths = []
    for level in range(len(config["down_block_types"])):
        found = indices(state, f"down_blocks.{level}.attentions.0.transformer_blocks.")
        depths.append(len(found) or 1)
    mid = indices(state, "mid_block.attentions.0.transformer_blocks.")
    base = config.get("transformer_layers_per_block", 1)
    base_list = base if isinstance(base, list | tuple) else [base] * len(depths)
    if mid and len(mid) != depths[-1]:
        return None  # a mid block unlike the last level: leave it to the strict load to refuse
    return None if list(base_list) == depths else depths
