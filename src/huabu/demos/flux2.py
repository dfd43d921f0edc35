"""The offline FLUX.2 demos: a tiny ``Flux2KleinPipeline`` (one double and one single block, a
28-layer Qwen3 text encoder of width 32, since the pipeline reads its hidden states 9, 18 and
27, and a four-channel FLUX.2 VAE) with random, seeded weights, and the byte-level BPE
tokenizer of the Z-Image demo; and a tiny FLUX.2 [dev] (``Flux2Pipeline``: the same transformer
with [dev]'s guidance embedding, over a 31-layer Mistral 3 whose hidden states 10, 20 and 30 it
reads; its tokenizer named in ``model_index.json`` as the published ``PixtralProcessor``).

At their random initialisation the transformer's modulation gates let almost nothing of the
prompt through (another prompt moves pixels by 1 of 255); the gates and the time embedding
that drives them are scaled up, so that a prompt steers the image about as much as the seed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from huabu.demos.flux import write_with_lora
from huabu.demos.zimage import qwen_tokenizer

DEMO_FLUX2_KLEIN = "demo-flux2-klein"
DEMO_FLUX2 = "demo-flux2"
_SEED = 20251207

_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 16,  # the VAE's 4 channels, patchified 2×2
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 96,  # three hidden states of the text encoder side by side
    "timestep_guidance_channels": 32,
    "axes_dims_rope": [4, 4, 4, 4],
    "guidance_embeds": False,
}
_VAE = {
    "block_out_channels": [8, 8, 8, 8],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}
_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 28,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
#: FLUX.2's published scheduler config.
_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}


def build_pipeline(seed: int = _SEED) -> Flux2KleinPipeline:
    """The FLUX.2 [klein] demo pipeline in memory, identical for the same seed."""
    with tempfile.TemporaryDirectory() as work:
        tokenizer = qwen_tokenizer(Path(work))
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(**_TRANSFORMER)
        with torch.no_grad():
            for name, layer in transformer.named_modules():
                if not isinstance(layer, torch.nn.Linear):
                    continue
                if "modulation" in name:
                    layer.weight.mul_(16)
                elif name.startswith("time_guidance_embed"):
                    layer.weight.mul_(4)
        return Flux2KleinPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**_SCHEDULER),
            vae=AutoencoderKLFlux2(**_VAE),
            text_encoder=Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), **_TEXT)),
            tokenizer=tokenizer,
            transformer=transformer,
            is_distilled=True,
        )


#: Mistral's chat format, as far as the pipeline uses it: each message's text parts in turn.
_CHAT = (
    "{% for message in messages %}[{{ message['role'] | upper }}]"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}[/{{ message['role'] | upper }}]{% endfor %}"
)


def build_dev_pipeline(seed: int = _SEED) -> Flux2Pipeline:
    """The FLUX.2 [dev] demo pipeline in memory, identical for the same seed."""
    with tempfile.TemporaryDirectory() as work:
        tokenizer = qwen_tokenizer(Path(work), ("[IMG]",))
    tokenizer.chat_template = _CHAT
    klein = build_pipeline(seed)
    torch.manual_seed(seed + 1)
    transformer = Flux2Transformer2DModel(**(_TRANSFORMER | {"guidance_embeds": True}))
    transformer.load_state_dict(klein.transformer.state_dict(), strict=False)
    text = _TEXT | {"num_hidden_layers": 31, "vocab_size": len(tokenizer)}
    vision = {"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 1,
              "num_attention_heads": 2, "head_dim": 8, "patch_size": 16}  # fmt: skip
    config = Mistral3Config(
        text_config={k: v for k, v in text.items() if k != "tie_word_embeddings"},
        vision_config=vision,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
    )
    return Flux2Pipeline(
        scheduler=klein.scheduler,
        vae=klein.vae,
        text_encoder=Mistral3ForConditionalGeneration(config),
        tokenizer=tokenizer,
        transformer=transformer,
    )


#: Where their demo LoRAs train: both block kinds' attention and feed-forward layers.
_LORA_LAYERS = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.ff.linear_in",
    "single_transformer_blocks.0.attn.to_qkv_mlp_proj",
    "single_transformer_blocks.0.attn.to_out",
)


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the FLUX.2 [klein] and [dev] demo folders and a LoRA for each under ``models``
    (each if missing, or all with ``force``); returns the paths written."""
    written = write_with_lora(
        models, DEMO_FLUX2_KLEIN, build_pipeline, _LORA_LAYERS, _SEED + 2, force=force
    )
    written += write_with_lora(
        models, DEMO_FLUX2, build_dev_pipeline, _LORA_LAYERS, _SEED + 3, force=force
    )
    index = models / "checkpoints" / DEMO_FLUX2 / "model_index.json"
    if index.parent in written:  # its tokenizer as published: Mistral's, in a processor
        config = json.loads(index.read_text())
        index.write_text(json.dumps(config | {"tokenizer": ["transformers", "PixtralProcessor"]}))
    return written
