"""Loading FLUX.1 and SD 3.x from their single files (see ``catalog.split_files`` for the
layouts).

Each part's config is its family's published one with every width and depth read from the
tensors, and what the tensors cannot tell from the file's ``huabu.config`` metadata (or the
checkpoint's ``<name>.json`` sidecar, by component). FLUX.1's transformer is converted from
BFL's layout here rather than by diffusers' converter, which assumes FLUX.1's full width
(3,072): this one reads the widths from the tensors, so FLUX.1 and huabu's tiny demo load
alike, and GGUF tensors stay quantized through it (diffusers' GGUF layers dequantize them as
they run). SD 3's MMDiT goes through diffusers' own converter, which reads its widths. The
tokenizers are huabu's own copies: CLIP's vocabulary and T5 v1.1's (Apache-2.0).
"""

from __future__ import annotations

import gzip
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from huabu.catalog.architectures import Architecture, Config, reference_config
from huabu.catalog.checkpoints import CheckpointHeader
from huabu.catalog.split_files import DIFFUSION_MODEL
from huabu.engine.single_file import clip_tokenizer, config_folder, derive_clip, derive_vae, indices
from huabu.errors import ModelUnavailable

T5_VOCABULARY = 32128  # T5 v1.1's embedding rows (its tokenizer's 32,100 ids, padded)


def t5_tokenizer() -> T5TokenizerFast:
    """T5 v1.1's tokenizer (FLUX.1's and SD 3's second), from the copy huabu ships."""
    return T5TokenizerFast(
        tokenizer_object=Tokenizer.from_str(_t5_json()),
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=100,
        model_max_length=512,
    )


@cache
def _t5_json() -> str:
    folder = resources.files("huabu.engine") / "configs" / "t5_tokenizer"
    return gzip.decompress((folder / "tokenizer.json.gz").read_bytes()).decode()


def transformer_config(shapes: dict[str, tuple[int, ...]], config: Config) -> None:
    """Overlay a BFL-layout FLUX.1 transformer's widths and depths on ``config``."""
    shapes = {key.removeprefix(DIFFUSION_MODEL): shape for key, shape in shapes.items()}
    hidden, in_channels = shapes["img_in.weight"]
    head = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    config["in_channels"] = in_channels
    config["attention_head_dim"] = head
    config["num_attention_heads"] = hidden // head
    config["joint_attention_dim"] = shapes["txt_in.weight"][1]
    config["pooled_projection_dim"] = shapes["vector_in.in_layer.weight"][1]
    config["num_layers"] = len(indices(shapes, "double_blocks."))
    config["num_single_layers"] = len(indices(shapes, "single_blocks."))
    config["guidance_embeds"] = "guidance_in.in_layer.weight" in shapes


def t5_config(shapes: dict[str, tuple[int, ...]], config: Config) -> None:
    """Overlay a T5 encoder's (transformers' layout) widths and depths on ``config``."""
    attention = "encoder.block.0.layer.0.SelfAttention."
    config["vocab_size"], config["d_model"] = shapes["shared.weight"]
    buckets, heads = shapes[attention + "relative_attention_bias.weight"]
    config["relative_attention_num_buckets"], config["num_heads"] = buckets, heads
    config["d_kv"] = shapes[attention + "q.weight"][0] // heads
    config["num_layers"] = len(indices(shapes, "encoder.block."))
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"
    config["feed_forward_proj"] = "gated-gelu" if gated in shapes else "relu"
    wide = gated if gated in shapes else "encoder.block.0.layer.1.DenseReluDense.wi.weight"
    config["d_ff"] = shapes[wide][0]


def _vae_config(shapes: dict[str, tuple[int, ...]], config: Config) -> None:
    prefix = "first_stage_model." if any(k.startswith("first_stage_model.") for k in shapes) else ""
    bare = {key.removeprefix(prefix): shape for key, shape in shapes.items()}
    bare.setdefault("post_quant_conv.weight", bare["decoder.conv_in.weight"][1:])
    derive_vae(bare, config, "")
    config["use_quant_conv"] = "quant_conv.weight" in bare
    config["use_post_quant_conv"] = "post_quant_conv.weight" in shapes or (
        f"{prefix}post_quant_conv.weight" in shapes
    )


def sd3_transformer_config(shapes: dict[str, tuple[int, ...]], config: Config) -> None:
    """Overlay an SAI-layout SD 3.x MMDiT's widths and depths on ``config`` (its heads, the
    hidden width over ``attention_head_dim``, are counted once overrides are in: ``configs``)."""
    shapes = {key.removeprefix(DIFFUSION_MODEL): shape for key, shape in shapes.items()}
    hidden, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
    config["in_channels"], config["patch_size"] = in_channels, patch
    config["out_channels"] = shapes["final_layer.linear.weight"][0] // (patch * patch)
    config["pos_embed_max_size"] = round(shapes["pos_embed"][1] ** 0.5)
    config["caption_projection_dim"], config["joint_attention_dim"] = shapes[
        "context_embedder.weight"
    ]
    config["pooled_projection_dim"] = shapes["y_embedder.mlp.0.weight"][1]
    config["num_layers"] = len(indices(shapes, "joint_blocks."))
    config["hidden_size"] = hidden  # (not a config key: ``configs`` turns it into heads)
    config["qk_norm"] = "rms_norm" if any(".ln_q." in key for key in shapes) else None
    config["dual_attention_layers"] = sorted(
        {int(key.split(".")[1]) for key in shapes if ".x_block.attn2." in key}
    )


def _clip_config(shapes: dict[str, tuple[int, ...]], config: Config) -> None:
    derive_clip(shapes, "text_model.", config)
    if "text_projection.weight" in shapes:  # (CLIP-G's projection is narrower than CLIP-L's)
        config["projection_dim"] = shapes["text_projection.weight"][0]


def _t5_or_clip(config: Config) -> Any:
    return t5_config if config.get("model_type") == "t5" else _clip_config


#: How each transformer class's config is read from its tensors.
_TRANSFORMERS = {"FluxTransformer2DModel": transformer_config,
                 "SD3Transformer2DModel": sd3_transformer_config}  # fmt: skip


def _part_header(file: Path, prefix: str) -> CheckpointHeader:
    header = CheckpointHeader.read(file)
    if not prefix:
        return header
    shapes = {k.removeprefix(prefix): v for k, v in header.shapes.items() if k.startswith(prefix)}
    return CheckpointHeader(shapes, header.metadata)


def configs(
    architecture: Architecture, path: Path, parts: dict[str, tuple[Path, str]]
) -> dict[str, Config]:
    """Every part's config, from the files' shapes and overrides."""
    found = reference_config(architecture)
    headers = {"transformer": CheckpointHeader.read(path)} | {
        component: _part_header(file, prefix) for component, (file, prefix) in parts.items()
    }
    for component, header in headers.items():
        config = found[component]
        if component == "transformer":
            derive = _TRANSFORMERS[config["_class_name"]]
        elif component == "vae":
            derive = _vae_config
        else:
            derive = _t5_or_clip(config)
        try:
            derive(header.shapes, config)
        except (KeyError, IndexError, ValueError) as exc:
            name = path.name if component == "transformer" else parts[component][0].name
            raise ModelUnavailable(
                f"{name} is not the {component} of a {architecture.label} model (missing {exc})"
            ) from None
    # What shapes cannot tell: the parts' own metadata, then the checkpoint's (its sidecar too).
    for component, (_, prefix) in parts.items():
        if not prefix:
            found[component].update(headers[component].overrides().get(component, {}))
    for component, values in headers["transformer"].overrides(path.with_suffix(".json")).items():
        if component in found:
            found[component].update(values)
    transformer = found["transformer"]
    if "hidden_size" in transformer:  # SD 3: heads of attention_head_dim (64 unless overridden)
        hidden = transformer.pop("hidden_size")
        transformer["num_attention_heads"] = hidden // transformer["attention_head_dim"]
    return found


def _tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose names start with ``prefix``, read alone: an
    all-in-one checkpoint's parts each read their own, not the whole file each time."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        names = [name for name in handle.keys() if name.startswith(prefix)]  # noqa: SIM118 - (no __iter__)
        return {name: handle.get_tensor(name) for name in names}


def _weights(path: Path, dtype: torch.dtype, prefix: str = "") -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (those under ``prefix``, without it) in ``dtype``; fp8 ones
    too, and ComfyUI's "scaled fp8" (each weight stored over its ``scale_weight``) multiplied
    back."""
    state = {k.removeprefix(prefix): v for k, v in _tensors(path, prefix).items()}
    if "scaled_fp8" in state:
        del state["scaled_fp8"]
        for key in [k for k in state if k.endswith(".scale_weight")]:
            scale = state.pop(key).float()
            weight = key.removesuffix("scale_weight") + "weight"
            state[weight] = state[weight].float() * scale
        state = {k: v for k, v in state.items() if not k.endswith(".scale_input")}
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def _encoder(model_class: Any, config: Any, part: tuple[Path, str], dtype: torch.dtype) -> Any:
    """A text encoder built without initialising its weights (T5-XXL has 4.7 billion) and
    given the file's; ModelUnavailable if the file lacks one it needs."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # (buffers such as CLIP's position ids stay real)
        model = model_class(config)
    state = _weights(part[0], dtype, part[1])
    own = model.state_dict()
    if not any(key.startswith("text_model.") for key in own):  # CLIP, as transformers 5 has it
        state = {key.removeprefix("text_model."): value for key, value in state.items()}
    if "shared.weight" in state:  # T5's embedding, tied to its encoder's
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    model.load_state_dict(state, strict=False, assign=True)
    if "shared.weight" in state:
        model.tie_weights()
    empty = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise ModelUnavailable(f"{part[0].name} lacks tensors the model needs (e.g. {empty[0]})")
    return model.eval()  # (built in training mode: T5's dropout would be on)


def _text_encoder(config: Config, part: tuple[Path, str], dtype: torch.dtype) -> Any:
    """T5, CLIP (FLUX.1's: its last hidden state) or CLIP with its projection (SD 3's two)."""
    if config.get("model_type") == "t5":
        return _encoder(T5EncoderModel, T5Config(**config), part, dtype)
    projected = config.get("architectures") == ["CLIPTextModelWithProjection"]
    model_class = CLIPTextModelWithProjection if projected else CLIPTextModel
    return _encoder(model_class, CLIPTextConfig(**config), part, dtype)


def load_parts(
    architecture: Architecture,
    path: Path,
    parts: dict[str, tuple[Path, str]],
    dtype: torch.dtype,
    cache: Path,
) -> dict[str, Any]:
    """The pipeline components of a split checkpoint: ``path`` the transformer (FLUX.1's
    .safetensors, or .gguf kept quantized; SD 3's SAI file), ``parts`` its text encoders and
    VAE (files of their own, or inside it)."""
    import diffusers
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from diffusers.loaders.single_file_utils import load_single_file_checkpoint

    found = configs(architecture, path, parts)
    folder = config_folder({k: found[k] for k in ("transformer", "vae")}, architecture, cache)
    quantization = None
    if path.suffix == ".gguf":
        from diffusers import GGUFQuantizationConfig

        quantization = GGUFQuantizationConfig(compute_dtype=dtype)
    transformer_class = getattr(diffusers, found["transformer"]["_class_name"])
    if transformer_class is diffusers.FluxTransformer2DModel:  # (.safetensors or .gguf)
        state = bfl_to_diffusers(load_single_file_checkpoint(str(path), local_files_only=True))
    else:  # SD 3's MMDiT alone: diffusers' own converter reads it, widths and all
        state = _tensors(path, DIFFUSION_MODEL)
    transformer = transformer_class.from_single_file(
        state,
        config=str(folder),
        subfolder="transformer",
        torch_dtype=dtype,
        quantization_config=quantization,
        local_files_only=True,
    )
    vae_file, vae_prefix = parts["vae"]
    vae = AutoencoderKL.from_single_file(
        _weights(vae_file, dtype, vae_prefix), config=str(folder), subfolder="vae",
        torch_dtype=dtype, local_files_only=True,
    )  # fmt: skip
    components = {
        "scheduler": FlowMatchEulerDiscreteScheduler(**found["scheduler"]),
        "vae": vae,
        "transformer": transformer,
    }
    encoders = sorted(name for name in parts if name.startswith("text_encoder"))
    for index, name in enumerate(encoders):
        encoder = _text_encoder(found[name], parts[name], dtype)
        tokenizer = "tokenizer" + name.removeprefix("text_encoder")
        components[name] = encoder
        if isinstance(encoder, T5EncoderModel):
            components[tokenizer] = t5_tokenizer()
        else:  # (OpenCLIP-trained encoders, SD 3's second, pad with "!")
            components[tokenizer] = clip_tokenizer(pad="!" if index == 1 else "<|endoftext|>")
    return components


def swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation gives (shift, scale); diffusers' (scale, shift)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


#: diffusers' name ← BFL's, for the tensors renamed one to one (weight and bias each).
BFL_RENAMED = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
}
BFL_DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
}
BFL_DOUBLE_NORMS = {
    "attn.norm_q": "img_attn.norm.query_norm",
    "attn.norm_k": "img_attn.norm.key_norm",
    "attn.norm_added_q": "txt_attn.norm.query_norm",
    "attn.norm_added_k": "txt_attn.norm.key_norm",
}


#: What a single block's fused ``linear1`` holds, in order.
BFL_LINEAR1 = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def bfl_to_diffusers(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """A FLUX.1 transformer's state dict from BFL's layout (``double_blocks``, fused QKV;
    ComfyUI's ``model.diffusion_model.`` prefix allowed) to diffusers', widths from the
    tensors. What diffusers' own converter does, for any width."""
    bfl = {key.removeprefix(DIFFUSION_MODEL): value for key, value in checkpoint.items()}
    out: dict[str, Any] = {}

    def move(new: str, old: str) -> None:
        for part in ("weight", "bias"):
            if f"{old}.{part}" in bfl:
                out[f"{new}.{part}"] = bfl.pop(f"{old}.{part}")

    for new, old in BFL_RENAMED.items():
        move(new, old)
    for part in ("weight", "bias"):
        out[f"norm_out.linear.{part}"] = swap_halves(
            bfl.pop(f"final_layer.adaLN_modulation.1.{part}")
        )
    for i in indices(bfl, "double_blocks."):
        old, new = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for to, of in BFL_DOUBLE.items():
            move(new + to, old + of)
        for to, of in BFL_DOUBLE_NORMS.items():
            out[f"{new}{to}.weight"] = bfl.pop(f"{old}{of}.scale")
        for stream, names in (("img", ("to_q", "to_k", "to_v")),
                              ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):  # fmt: skip
            for part in ("weight", "bias"):
                fused = bfl.pop(f"{old}{stream}_attn.qkv.{part}")
                for name, piece in zip(names, torch.chunk(fused, 3, dim=0), strict=True):
                    out[f"{new}attn.{name}.{part}"] = piece
    for i in indices(bfl, "single_blocks."):
        old, new = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        move(new + "norm.linear", old + "modulation.lin")
        move(new + "proj_out", old + "linear2")
        out[f"{new}attn.norm_q.weight"] = bfl.pop(f"{old}norm.query_norm.scale")
        out[f"{new}attn.norm_k.weight"] = bfl.pop(f"{old}norm.key_norm.scale")
        for part in ("weight", "bias"):
            fused = bfl.pop(f"{old}linear1.{part}")
            width = out["x_embedder.weight"].shape[0]  # the hidden width
            sizes = (width, width, width, fused.shape[0] - 3 * width)
            for name, piece in zip(BFL_LINEAR1, torch.split(fused, sizes, dim=0), strict=True):
                out[f"{new}{name}.{part}"] = piece
    if bfl:
        extra = next(iter(bfl))
        raise ModelUnavailable(f"unexpected tensors in a FLUX.1 transformer (e.g. {extra})")
    return out
