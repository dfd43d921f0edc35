"""diffusers → original (LDM / SGM) state-dict layout, the layout downloaded checkpoints use.

huabu writes its demos' single files (``demo-single``, ``demo-xl-single``) with this, so the
single-file path is tested on files laid out like real downloads. The mapping follows diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py`` and
``convert_diffusers_to_original_sdxl.py``, generalised to any number of levels and layers per
level (the demos have 2 levels, SD 1.5 has 4, SDXL 3).
"""

from __future__ import annotations

import torch

from huabu.catalog.architectures import Config

_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]
_UNET_FIXED = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
    # SDXL's size/crop and pooled-text embedding
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
}


def _unet_prefixes(config: Config) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for every block of a UNet with this config."""
    levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    pairs = []
    for i in range(levels):
        for j in range(per_level):
            ldm = f"input_blocks.{(per_level + 1) * i + j + 1}."
            pairs.append((f"down_blocks.{i}.resnets.{j}.", ldm + "0."))
            if down_attn[i]:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", ldm + "1."))
        for j in range(per_level + 1):
            ldm = f"output_blocks.{(per_level + 1) * i + j}."
            pairs.append((f"up_blocks.{i}.resnets.{j}.", ldm + "0."))
            if up_attn[i]:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", ldm + "1."))
        if i < levels - 1:
            pairs.append(
                (
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    f"input_blocks.{(per_level + 1) * (i + 1)}.0.op.",
                )
            )
            slot = 2 if up_attn[i] else 1
            pairs.append(
                (
                    f"up_blocks.{i}.upsamplers.0.",
                    f"output_blocks.{(per_level + 1) * i + per_level}.{slot}.",
                )
            )
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    pairs.extend((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2))
    return pairs


def _rename(key: str, pairs: list[tuple[str, str]]) -> str:
    for source, target in pairs:
        if key.startswith(source):
            return target + key[len(source) :]
    raise KeyError(key)


def unet_to_ldm(state: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    return {"model.diffusion_model." + unet_key_to_ldm(k, config): v for k, v in state.items()}


def unet_key_to_ldm(key: str, config: Config) -> str:
    """One diffusers UNet parameter (or module) name in the LDM / SGM layout."""
    pairs = list(_UNET_FIXED.items()) + _unet_prefixes(config)
    if ".resnets." in key:
        for ldm_part, hf_part in _RESNET:
            key = key.replace(f".{hf_part}.", f".{ldm_part}.")
    return _rename(key, pairs)


def controlnet_to_ldm(state: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    """A diffusers ControlNet in the layout of A1111's ControlNet downloads
    (``control_model.*``: the UNet's encoder, ``zero_convs``, ``input_hint_block``,
    ``middle_block_out``)."""
    pairs = [(k, v) for k, v in _UNET_FIXED.items() if not k.startswith("conv_")]
    pairs += [("conv_in.", "input_blocks.0.0."), ("controlnet_mid_block.", "middle_block_out.0.")]
    encoder = config | {
        "up_block_types": [t.replace("Down", "Up") for t in config["down_block_types"]]
    }
    pairs += [p for p in _unet_prefixes(encoder) if p[0].startswith(("down_blocks", "mid_block"))]
    hint = "controlnet_cond_embedding."
    blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    pairs += [(f"{hint}blocks.{j}.", f"input_hint_block.{2 * (j + 1)}.") for j in range(blocks)]
    pairs += [
        (f"{hint}conv_in.", "input_hint_block.0."),
        (f"{hint}conv_out.", f"input_hint_block.{2 * (blocks + 1)}."),
    ]
    out = {}
    for key, value in state.items():
        if key.startswith("controlnet_down_blocks."):
            index, _, rest = key.removeprefix("controlnet_down_blocks.").partition(".")
            out[f"control_model.zero_convs.{index}.0.{rest}"] = value
            continue
        if ".resnets." in key:
            for ldm_part, hf_part in _RESNET:
                key = key.replace(f".{hf_part}.", f".{ldm_part}.")
        out["control_model." + _rename(key, pairs)] = value
    return out


def vae_to_ldm(state: dict[str, torch.Tensor], config: Config) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    per_level = config["layers_per_block"]
    pairs = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for i in range(levels):
        pairs += [
            (f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.")
            for j in range(per_level)
        ]
        pairs += [
            (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{levels - 1 - i}.block.{j}.")
            for j in range(per_level + 1)
        ]
        if i < levels - 1:
            pairs.append(
                (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
            )
            pairs.append(
                (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{levels - 1 - i}.upsample.")
            )
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)
        ]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    attention = {
        "group_norm.": "norm.",
        "to_q.": "q.",
        "to_k.": "k.",
        "to_v.": "v.",
        "to_out.0.": "proj_out.",
    }
    out = {}
    for key, value in state.items():
        new = key
        for source, target in pairs:
            if key.startswith(source):
                new = target + key[len(source) :]
                break
        if ".mid.attn_1." in new:
            head, _, tail = new.rpartition(".mid.attn_1.")
            for source, target in attention.items():
                if tail.startswith(source):
                    tail = target + tail[len(source) :]
            new = f"{head}.mid.attn_1.{tail}"
            if value.ndim == 2:  # LDM's attention projections are 1×1 convolutions
                value = value[:, :, None, None]
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + new] = value
    return out


def text_encoder_to_ldm(
    state: dict[str, torch.Tensor], prefix: str = "cond_stage_model.transformer."
) -> dict[str, torch.Tensor]:
    """SD 1.x files nest HF CLIP under ``cond_stage_model.transformer.text_model.`` (SDXL's
    first encoder under ``conditioner.embedders.0.transformer.text_model.``); transformers 5
    state dicts no longer carry the ``text_model.`` level."""
    out = {}
    for key, value in state.items():
        if key == "text_model.embeddings.position_ids" or key == "embeddings.position_ids":
            continue
        key = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + key] = value
    return out


_OPEN_CLIP_LAYER = [
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in OpenCLIP's layout, as SDXL files hold their second
    encoder (``conditioner.embedders.1.model.``): fused q/k/v (``attn.in_proj_*``), and the
    projection as a bare matrix applied from the right."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T,
    }
    state.pop("embeddings.position_ids", None)
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        source, target = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{source}self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
            for hf_part, ldm_part in _OPEN_CLIP_LAYER:
                out[f"{target}{ldm_part}{kind}"] = state.pop(f"{source}{hf_part}{kind}")
    if state:
        raise KeyError(f"unmapped text encoder weights: {sorted(state)[:3]}")
    return {prefix + k: v for k, v in out.items()}
