"""The SDXL demo: a tiny SDXL-architecture model with random weights, and its extras.

Everything that makes SDXL SDXL is here, only small: two text encoders (a CLIP-L-like one and
an OpenCLIP-like one with a projection, whose pooled output conditions the UNet), the UNet's
size/crop conditioning (``text_time``), no attention on the first level and two transformer
layers on the last, an Euler scheduler and SDXL's VAE scaling. The two encoders differ in width
(32 and 48), as CLIP-L and OpenCLIP bigG do, which is how single-file loading tells them apart.

Built as ``checkpoints/demo-xl/`` (diffusers folder) and ``checkpoints/demo-xl-single.safetensors``
(the SGM layout of SDXL downloads), with a LoRA in kohya's SDXL layout, an embedding with
``clip_l``/``clip_g`` vectors, a ControlNet, an IP-Adapter, and ``checkpoints/demo-xl-refiner/``,
a refiner (SDXL's refiner architecture).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from huabu.catalog.architectures import Architecture, reference_config
from huabu.catalog.checkpoints import METADATA_KEY
from huabu.demos.ldm_layout import (
    open_clip_to_ldm,
    text_encoder_to_ldm,
    unet_key_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from huabu.demos.sd import build_controlnet, staged, tokenizer, write_ip_adapter

DEMO_XL = "demo-xl"
DEMO_XL_SINGLE = "demo-xl-single"
DEMO_XL_LORA = "demo-xl-lora"
DEMO_XL_EMBEDDING = "demo-xl-embedding"
DEMO_XL_CONTROLNET = "demo-xl-controlnet"
DEMO_XL_IP_ADAPTER = "demo-xl-ip-adapter"
#: A tiny model of SDXL's refiner architecture (the second encoder only, an aesthetic score).
#: (Its single-file layout, ``refiner_single_file_state``, is not in the demo library: novita's
#: ``refiner`` names no model and takes the library's only refiner.)
DEMO_XL_REFINER = "demo-xl-refiner"
#: The demo's default output size: SDXL's native 1024² scaled down as the demo's 512² is from
#: SD 1.5's (its UNet config's sample_size is 64 latents, like the SD 1.x demo).
DEFAULT_SIZE = 512
_SEED = 20241101

#: The encoders' widths (CLIP-L's 768 and bigG's 1280, scaled down) and the pooled width.
_WIDTH_1, _WIDTH_2, _POOLED = 32, 48, 32
_TEXT_1 = {
    "hidden_size": _WIDTH_1,
    "intermediate_size": 64,
    "hidden_act": "quick_gelu",
    "projection_dim": _POOLED,
}
_TEXT_2 = {
    "hidden_size": _WIDTH_2,
    "intermediate_size": 96,
    "hidden_act": "gelu",
    "projection_dim": _POOLED,
}
_TEXT_COMMON = {
    "num_attention_heads": 2,
    "num_hidden_layers": 5,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
_TIME_EMBED = 8
_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "sample_size": 64,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "cross_attention_dim": _WIDTH_1 + _WIDTH_2,
    "attention_head_dim": [2, 2],
    "transformer_layers_per_block": [1, 2],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": _TIME_EMBED,
    "projection_class_embeddings_input_dim": _POOLED + 6 * _TIME_EMBED,
    "norm_num_groups": 32,
}
#: The refiner's UNet: the second encoder's text alone; pooled text + size, crop and score.
_REFINER_UNET = _UNET | {
    "cross_attention_dim": _WIDTH_2,
    "projection_class_embeddings_input_dim": _POOLED + 5 * _TIME_EMBED,
}
_VAE = {
    "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
#: What tensor shapes cannot tell the single-file loader: the head counts, and the native size.
_OVERRIDES = {
    "unet": {
        "attention_head_dim": _UNET["attention_head_dim"],
        "sample_size": _UNET["sample_size"],
    },
    "text_encoder": {"num_attention_heads": 2},
    "text_encoder_2": {"num_attention_heads": 2},
}
#: What the single-file refiner's shapes cannot tell (its sidecar or metadata).
REFINER_OVERRIDES = {key: value for key, value in _OVERRIDES.items() if key != "text_encoder"}


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(reference_config(Architecture.SDXL)["scheduler"])


def build_pipeline(seed: int = _SEED) -> StableDiffusionXLPipeline:
    """The SDXL demo pipeline in memory, identical for the same seed."""
    torch.manual_seed(seed)
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**_VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**_TEXT_COMMON, **_TEXT_1)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_TEXT_COMMON, **_TEXT_2)),
        tokenizer=tokenizer(),
        tokenizer_2=tokenizer("!"),  # OpenCLIP pads with "!", as SDXL's second tokenizer does
        unet=UNet2DConditionModel(**_UNET),
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_refiner(seed: int = _SEED + 5) -> StableDiffusionXLImg2ImgPipeline:
    """The SDXL demo's refiner, laid out as SDXL's refiner is: no first text encoder, and an
    aesthetic score in place of the target size."""
    torch.manual_seed(seed)
    return StableDiffusionXLImg2ImgPipeline(
        vae=AutoencoderKL(**_VAE),
        text_encoder=None,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_TEXT_COMMON, **_TEXT_2)),
        tokenizer=None,
        tokenizer_2=tokenizer("!"),
        unet=UNet2DConditionModel(**_REFINER_UNET),
        scheduler=_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    )


def single_file_state(pipe: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the SGM single-file layout of SDXL downloads."""
    state = unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    state |= vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config))
    state |= text_encoder_to_ldm(
        pipe.text_encoder.state_dict(), prefix="conditioner.embedders.0.transformer."
    )
    state |= open_clip_to_ldm(
        pipe.text_encoder_2.state_dict(), prefix="conditioner.embedders.1.model."
    )
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def refiner_single_file_state(refiner: StableDiffusionXLImg2ImgPipeline) -> dict[str, torch.Tensor]:
    """The refiner's weights in the layout of SDXL refiner downloads: its one text encoder is
    ``conditioner.embedders.0``."""
    state = unet_to_ldm(refiner.unet.state_dict(), dict(refiner.unet.config))
    state |= vae_to_ldm(refiner.vae.state_dict(), dict(refiner.vae.config))
    state |= open_clip_to_ldm(
        refiner.text_encoder_2.state_dict(), prefix="conditioner.embedders.0.model."
    )
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def build_lora(pipe: StableDiffusionXLPipeline, seed: int = _SEED + 1) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA in kohya's SDXL layout, the layout of SDXL LoRA downloads: UNet modules by
    their SGM names (``lora_unet_input_blocks_4_1_…``), both text encoders (``lora_te1_``,
    ``lora_te2_``), ``lora_down``/``lora_up``/``alpha`` per module."""
    generator = torch.Generator().manual_seed(seed)
    rank, state = 4, {}

    def add(name: str, module: torch.nn.Linear) -> None:
        down = torch.randn(rank, module.in_features, generator=generator) * 0.2
        state[f"{name}.lora_down.weight"] = down
        state[f"{name}.lora_up.weight"] = (
            torch.randn(module.out_features, rank, generator=generator) * 0.2
        )
        state[f"{name}.alpha"] = torch.tensor(float(rank))

    config = dict(pipe.unet.config)
    for path, module in pipe.unet.named_modules():
        if path.endswith((".to_q", ".to_k", ".to_v", ".to_out.0")) and ".attn" in path:
            add(
                "lora_unet_" + unet_key_to_ldm(path + ".", config).rstrip(".").replace(".", "_"),
                module,
            )
    for prefix, encoder in (("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)):
        for path, module in encoder.named_modules():
            if path.endswith(("_proj",)) and ".self_attn." in path:
                name = path if path.startswith("text_model.") else "text_model." + path
                add(prefix + name.replace(".", "_"), module)
    return state


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the SDXL demo and its extras under ``models`` (each if missing, or all with
    ``force``); returns the paths written."""
    checkpoints = models / "checkpoints"
    folder, single = checkpoints / DEMO_XL, checkpoints / f"{DEMO_XL_SINGLE}.safetensors"
    lora = models / "loras" / f"{DEMO_XL_LORA}.safetensors"
    embedding = models / "embeddings" / f"{DEMO_XL_EMBEDDING}.safetensors"
    controlnet = models / "controlnet" / DEMO_XL_CONTROLNET
    ip_adapter = models / "ipadapter" / DEMO_XL_IP_ADAPTER
    refiner = checkpoints / DEMO_XL_REFINER
    missing = [
        p
        for p in (folder, single, lora, embedding, controlnet, ip_adapter, refiner)
        if force or not p.exists()
    ]
    if not missing:
        return []
    pipe = build_pipeline()
    for path in missing:
        with staged(path) as staging:
            if path == folder:
                pipe.save_pretrained(staging, safe_serialization=True)
            elif path == single:
                metadata = {METADATA_KEY: json.dumps(_OVERRIDES)}
                save_file(single_file_state(pipe), str(staging), metadata=metadata)
            elif path == lora:
                save_file(build_lora(pipe), str(staging))
            elif path == embedding:
                # Two vectors per encoder, in the layout SDXL embeddings are shared in.
                generator = torch.Generator().manual_seed(_SEED + 2)
                vectors = {
                    "clip_l": torch.randn(2, _WIDTH_1, generator=generator),
                    "clip_g": torch.randn(2, _WIDTH_2, generator=generator),
                }
                save_file(vectors, str(staging))
            elif path == controlnet:
                net = build_controlnet(pipe, seed=_SEED + 3)
                net.save_pretrained(staging, safe_serialization=True)
            elif path == refiner:
                build_refiner().save_pretrained(staging, safe_serialization=True)
            else:
                staging.mkdir()
                write_ip_adapter(pipe, staging, seed=_SEED + 4)
    return missing
