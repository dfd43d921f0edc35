"""The offline demo model: a tiny SD 1.5-architecture checkpoint with random weights.

It exists so that everything huabu does runs offline and fast on a CPU — every sampler, img2img,
the single-file loader — with a real CLIP tokenizer. Its images are coloured noise: it has never
been trained. Built deterministically (seeded), in both layouts: ``checkpoints/demo/`` (diffusers
folder) and ``checkpoints/demo-single.safetensors`` (original LDM single-file layout).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from huabu.catalog.architectures import Architecture, reference_config
from huabu.catalog.checkpoints import METADATA_KEY
from huabu.demos.ldm_layout import controlnet_to_ldm, text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
from huabu.engine.single_file import clip_tokenizer as tokenizer

DEMO = "demo"
DEMO_SINGLE = "demo-single"
DEMO_LORA = "demo-lora"
DEMO_EMBEDDING = "demo-embedding"
DEMO_CONTROLNET = "demo-controlnet"
#: The same ControlNet as one file in A1111's layout (``control_model.*``), as downloaded.
DEMO_CONTROLNET_SINGLE = "demo-controlnet-single"
DEMO_VAE = "demo-vae"
#: An SD 2.x-style demo (linear attention projections, GELU text encoder) that predicts v.
DEMO_V = "demo-v"
DEMO_IP_ADAPTER = "demo-ip-adapter"
NOTICE = (
    "The demo models have random weights: they make noise-like images, not pictures. Put a "
    "real checkpoint (Stable Diffusion, FLUX.1, SD 3.x, Z-Image, Qwen-Image) in "
    "models/checkpoints/ for real images."
)
_SEED = 20240601

# Two attention heads (head dim 16): with 8, attention dominates and 512² is 3.5× slower.
_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 2,
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 2,
    "norm_num_groups": 32,
}
_VAE = {
    "block_out_channels": [32, 32, 64, 64],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "sample_size": 64,
}
_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_hidden_layers": 5,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}


#: What the demo's SD 2.x sibling (``demo-v``) changes: the family's traits huabu reads (linear
#: attention projections, a GELU text encoder) and a v-prediction scheduler.
_SD2_UNET = {"use_linear_projection": True}
_SD2_TEXT = {"hidden_act": "gelu"}


def build_pipeline(
    seed: int = _SEED, family: Architecture = Architecture.SD1
) -> StableDiffusionPipeline:
    """The demo pipeline in memory, identical for the same seed (and family: SD 1.x, or the
    SD 2.x sibling, so both prediction types run in tests)."""
    sd2 = family is Architecture.SD2
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_UNET, **(_SD2_UNET if sd2 else {}))
    vae = AutoencoderKL(**_VAE)
    text_encoder = CLIPTextModel(CLIPTextConfig(**(_TEXT | (_SD2_TEXT if sd2 else {}))))
    scheduler = PNDMScheduler.from_config(reference_config(family)["scheduler"])
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def single_file_state(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the original single-file (LDM) layout."""
    state: dict[str, torch.Tensor] = {}
    state |= unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config))
    state |= vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config))
    state |= text_encoder_to_ldm(pipe.text_encoder.state_dict())
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def build_lora(pipe: StableDiffusionPipeline, seed: int = _SEED + 1) -> dict[str, torch.Tensor]:
    """A tiny random LoRA (rank 4) for the demo's UNet attention, in diffusers' layout."""
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        init_lora_weights=False,  # random B as well as A: the LoRA visibly changes images
    )
    pipe.unet.add_adapter(config, adapter_name="demo")
    state = get_peft_model_state_dict(pipe.unet, adapter_name="demo")
    pipe.unet.delete_adapters("demo")
    return {f"unet.{key}": value.detach().contiguous().clone() for key, value in state.items()}


def build_controlnet(pipe: Any, seed: int = _SEED + 3) -> ControlNetModel:
    """A ControlNet for a demo UNet (SD 1.x or SDXL). ``from_unet`` starts with zero
    convolutions (no effect until trained), and the control image's embedding, randomly
    initialised, passes almost nothing of the image on; here both are random at scales that
    keep the signal, so the control, and which image it is, are visible."""
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(pipe.unet)
    embedding = controlnet.controlnet_cond_embedding
    with torch.no_grad():
        for block in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            block.weight.normal_(0, 0.05)
            block.bias.zero_()
        for conv in [embedding.conv_in, *embedding.blocks, embedding.conv_out]:
            gain = 2.0 if conv is not embedding.conv_out else 16.0
            conv.weight.normal_(0, (gain / conv.weight[0].numel()) ** 0.5)
            conv.bias.zero_()
    return controlnet


def write_ip_adapter(pipe: StableDiffusionPipeline, folder: Path, seed: int = _SEED + 4) -> None:
    """A tiny IP-Adapter for the demo UNet: a CLIP vision encoder (image_encoder/) and the
    adapter weights (image projection; to_k_ip/to_v_ip per cross-attention) in the layout
    diffusers' load_ip_adapter reads."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    unet, embed_dim = pipe.unet, 32
    cross = unet.config.cross_attention_dim
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=224,
            patch_size=32,
            projection_dim=embed_dim,
        )
    )
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    state = {
        "image_proj.proj.weight": torch.randn(cross * 4, embed_dim) * 0.1,
        "image_proj.proj.bias": torch.zeros(cross * 4),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    channels = list(unet.config.block_out_channels)
    key = 1  # diffusers numbers every attention processor; cross-attention ones are odd
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        state[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.1
        state[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.1
        key += 2
    save_file(state, str(folder / "ip-adapter.safetensors"))


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A staging path beside ``path`` to write into; renamed into place whole when the block
    succeeds (replacing what was there), removed when it fails."""
    staging = path.with_name(f".{path.name}.staging")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove(staging)
    try:
        yield staging
        _remove(path)
        staging.rename(path)
    finally:
        _remove(staging)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the SD 1.x demo in both layouts, its SD 2.x sibling and their extras under
    ``models`` (each if missing, or all with ``force``); returns the paths written."""
    checkpoints = models / "checkpoints"
    folder = checkpoints / DEMO
    single = checkpoints / f"{DEMO_SINGLE}.safetensors"
    lora = models / "loras" / f"{DEMO_LORA}.safetensors"
    embedding = models / "embeddings" / f"{DEMO_EMBEDDING}.safetensors"
    controlnet = models / "controlnet" / DEMO_CONTROLNET
    controlnet_single = controlnet.with_name(f"{DEMO_CONTROLNET_SINGLE}.safetensors")
    v_folder = checkpoints / DEMO_V
    vae = models / "vae" / DEMO_VAE
    ip_adapter = models / "ipadapter" / DEMO_IP_ADAPTER
    # In dependency order: the single-file ControlNet is converted from the folder one.
    everything = (
        folder,
        single,
        lora,
        embedding,
        controlnet,
        controlnet_single,
        vae,
        ip_adapter,
        v_folder,
    )
    written = [p for p in everything if force or not p.exists()]
    for path in written:
        with staged(path) as staging:
            if path == folder:
                build_pipeline().save_pretrained(staging, safe_serialization=True)
            elif path == single:
                # What tensor shapes cannot tell the loader: the demo's head counts.
                overrides = {
                    "unet": {"attention_head_dim": 2},
                    "text_encoder": {"num_attention_heads": 2},
                }
                save_file(
                    single_file_state(build_pipeline()),
                    str(staging),
                    metadata={METADATA_KEY: json.dumps(overrides)},
                )
            elif path == lora:
                save_file(build_lora(build_pipeline()), str(staging))
            elif path == embedding:
                # A two-vector embedding in A1111's safetensors layout, random like the rest.
                generator = torch.Generator().manual_seed(_SEED + 2)
                vectors = torch.randn(2, _TEXT["hidden_size"], generator=generator)
                save_file({"emb_params": vectors}, str(staging))
            elif path == controlnet:
                net = build_controlnet(build_pipeline())
                net.save_pretrained(staging, safe_serialization=True)
            elif path == controlnet_single:
                net = ControlNetModel.from_pretrained(controlnet)
                save_file(controlnet_to_ldm(net.state_dict(), dict(net.config)), str(staging))
            elif path == vae:
                # The demo's own VAE with its output colours inverted: an override you can see.
                other = build_pipeline().vae
                with torch.no_grad():
                    for parameter in other.decoder.conv_out.parameters():
                        parameter.mul_(-1)
                other.save_pretrained(staging, safe_serialization=True)
            elif path == ip_adapter:
                staging.mkdir()
                write_ip_adapter(build_pipeline(), staging)
            else:
                build_pipeline(_SEED + 5, Architecture.SD2).save_pretrained(
                    staging, safe_serialization=True
                )
    return written
