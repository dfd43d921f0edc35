"""The offline SD 3.x demo: a tiny Stable Diffusion 3 (an MMDiT transformer, two CLIP encoders
with projections and a T5, a 16-channel-style VAE reduced to 4 channels) with random, seeded
weights, tokenizers as in ``demos.flux``."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from huabu.demos.flux import TINY_CLIP, TINY_T5, TINY_VAE, write_with_lora
from huabu.demos.sd import tokenizer
from huabu.engine.split_files import t5_tokenizer

DEMO_SD3 = "demo-sd3"
_SEED = 20251202

#: SD 3.5's transformer shrunk: two joint blocks of 4 heads of 8, 2×2 patches.
_TRANSFORMER = {
    "sample_size": 32,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 64,
    "out_channels": 16,
    "pos_embed_max_size": 96,
}
#: The flow demos' VAE with 16 latent channels, as SD 3's (its inpainting pipeline takes no
#: other).
_VAE = TINY_VAE | {"latent_channels": 16}
#: Each CLIP's width (their sequences side by side fill T5's 64) and pooled projection.
_CLIP = TINY_CLIP
_T5 = TINY_T5 | {"d_model": 64}


def build_pipeline(seed: int = _SEED) -> StableDiffusion3Pipeline:
    """The SD 3 demo pipeline in memory, identical for the same seed."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(**_TRANSFORMER)
    # As in demos.flux: the random text pathway scaled up, so that a prompt shows.
    with torch.no_grad():
        transformer.context_embedder.weight.mul_(8)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=AutoencoderKL(**_VAE),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**_CLIP)),
        tokenizer=tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_CLIP)),
        tokenizer_2=tokenizer(pad="!"),
        text_encoder_3=T5EncoderModel(T5Config(**_T5)),
        tokenizer_3=t5_tokenizer(),
    )


#: Where its demo LoRA trains: attention and feed-forward layers of the transformer.
_LORA_LAYERS = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.ff.net.2",
    "transformer_blocks.1.attn.to_out.0",
)


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the SD 3 demo folder and its LoRA under ``models`` (each if missing, or both
    with ``force``); returns the paths written."""
    return write_with_lora(models, DEMO_SD3, build_pipeline, _LORA_LAYERS, _SEED + 1, force=force)
