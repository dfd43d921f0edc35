"""The offline FLUX.1 demos: a tiny FLUX.1 [dev]-architecture pipeline (guidance embedding, CLIP
and T5 text encoders, a 16-channel-style VAE reduced to one channel) with random, seeded weights,
and the same weights as a FLUX.1 Kontext [dev] folder (Kontext's transformer is FLUX.1's; what
makes it Kontext is that its pipeline reads the image to edit beside the prompt).

Its tokenizers are the ones huabu ships: CLIP's vocabulary and T5 v1.1's. The same weights are
also written as FLUX.1 is downloaded (``demos.flux_files``): the transformer alone, in BFL's
layout and as GGUF, its text encoders and VAE beside it. Same code, same weights from build to
build.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from huabu.catalog.architectures import Architecture, reference_config
from huabu.demos.sd import staged, tokenizer
from huabu.engine.split_files import T5_VOCABULARY, t5_tokenizer

DEMO_FLUX = "demo-flux"
DEMO_FLUX_KONTEXT = "demo-flux-kontext"
#: A LoRA for it in the diffusers/peft layout (``transformer.<module>.lora_A/B.weight``).
DEMO_FLUX_LORA = "demo-flux-lora"
_SEED = 20251201

#: FLUX.1 [dev]'s transformer shrunk: one double and one single block, 2 heads of 16.
_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 4,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": [4, 4, 8],
    "guidance_embeds": True,
}
#: Four narrow blocks: a latent 8× smaller than the image, as FLUX's (so a 1024² image is 4,096
#: tokens), with one latent channel (packed 2×2 into the transformer's 4). The other flow demos
#: take it with their own latent channels and scaling.
TINY_VAE = {
    "block_out_channels": [8, 8, 8, 8],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "latent_channels": 1,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 32,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "shift_factor": 0.0609,
    "scaling_factor": 1.5035,
}
#: The tiny CLIP text encoder of the flow demos (FLUX.1's, SD 3's two).
TINY_CLIP = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 32,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
#: The tiny T5 encoder of the flow demos (SD 3's is twice as wide).
TINY_T5 = {
    "d_model": 32,
    "d_kv": 8,
    "d_ff": 37,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "vocab_size": T5_VOCABULARY,
}
#: FLUX.1 [dev]'s published scheduler config.
_SCHEDULER = reference_config(Architecture.FLUX1)["scheduler"]


def build_pipeline(seed: int = _SEED) -> FluxPipeline:
    """The FLUX demo pipeline in memory, identical for the same seed."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**_TRANSFORMER)
    vae = AutoencoderKL(**TINY_VAE)
    clip = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    encoder = T5EncoderModel(T5Config(**TINY_T5))
    # At their random initialisation the text and guidance pathways are too weak to show
    # in the image (another prompt moves pixels by 8 of 255 at most); scaled up, a prompt
    # steers the image about as much as the seed does, and guidance visibly.
    embedders = transformer.time_text_embed
    with torch.no_grad():
        transformer.context_embedder.weight.mul_(8)
        for part in (embedders.text_embedder, embedders.guidance_embedder):
            for layer in part.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(4)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**_SCHEDULER),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer(),
        text_encoder_2=encoder,
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )


#: The attention and feed-forward layers of both block kinds: where FLUX LoRAs train.
_LORA_LAYERS = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.ff.net.2",
    "single_transformer_blocks.0.attn.to_k",
    "single_transformer_blocks.0.proj_out",
)


def transformer_lora(
    transformer: torch.nn.Module, layers: tuple[str, ...], seed: int, rank: int = 4
) -> dict[str, torch.Tensor]:
    """A random rank-``rank`` LoRA over a transformer's ``layers``, in the diffusers/peft
    layout every flow family's loader reads (``transformer.<module>.lora_A/B.weight``)."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    state = {}
    for name in layers:
        layer = modules[name]
        down = torch.randn(rank, layer.in_features, generator=generator) * 0.5
        up = torch.randn(layer.out_features, rank, generator=generator) * 0.5
        state[f"transformer.{name}.lora_A.weight"] = down
        state[f"transformer.{name}.lora_B.weight"] = up
    return state


def write_with_lora(
    models: Path,
    name: str,
    build_pipeline: Callable[[], Any],
    layers: tuple[str, ...],
    seed: int,
    *,
    force: bool,
    siblings: dict[str, Any] | None = None,
) -> list[Path]:
    """Write a flow demo's folder ``checkpoints/<name>``, a LoRA for it,
    ``loras/<name>-lora.safetensors``, and ``siblings`` (name → another pipeline class over
    the same components), each if missing (or all with ``force``), from one build of its
    pipeline; returns the paths written."""
    folder = models / "checkpoints" / name
    lora = models / "loras" / f"{name}-lora.safetensors"
    others = {models / "checkpoints" / other: cls for other, cls in (siblings or {}).items()}
    written = [path for path in (folder, *others, lora) if force or not path.exists()]
    if not written:
        return []
    pipe = build_pipeline()
    for path in written:
        with staged(path) as staging:
            if path == lora:
                save_file(transformer_lora(pipe.transformer, layers, seed), str(staging))
            else:
                as_written = others[path](**pipe.components) if path in others else pipe
                as_written.save_pretrained(staging, safe_serialization=True)
    return written


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the FLUX.1 demo folder, its Kontext sibling and its LoRA under ``models`` (each if
    missing, or all with ``force``); returns the paths written."""
    return write_with_lora(
        models,
        DEMO_FLUX,
        build_pipeline,
        _LORA_LAYERS,
        _SEED + 1,
        force=force,
        siblings={DEMO_FLUX_KONTEXT: FluxKontextPipeline},
    )
