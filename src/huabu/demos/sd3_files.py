"""demo-sd3 as SAI ships SD 3.x: one all-in-one file in SAI's layout
(``checkpoints/demo-sd3-single.safetensors``: the MMDiT under ``model.diffusion_model.``, its
VAE under ``first_stage_model.``, its CLIP-L, CLIP-G and T5 under ``text_encoders.``). What the
shapes of such tiny parts cannot tell (heads, CLIP-G's activation, the VAE's groups and
scaling) rides in the file's ``huabu.config`` metadata, as any checkpoint's may.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from huabu.catalog.checkpoints import METADATA_KEY
from huabu.catalog.split_files import DIFFUSION_MODEL
from huabu.demos import flux, sd3
from huabu.demos.ldm_layout import vae_to_ldm
from huabu.demos.sd import staged
from huabu.engine.split_files import swap_halves

DEMO_SD3_SINGLE = "demo-sd3-single"

#: SAI's name ← diffusers', for the tensors renamed one to one outside the blocks.
_RENAMED = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
#: In each joint block (the last one's context side has no output projection nor MLP).
_BLOCK = {
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
}
_NORMS = {
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
}


def sai_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers SD 3 transformer's state dict in SAI's layout (diffusers' converter reads
    it back; the build checks the round trip)."""
    d = dict(state)
    out = {"pos_embed": d.pop("pos_embed.pos_embed")}

    def move(sai: str, ours: str, change=lambda t: t) -> None:
        for part in ("weight", "bias"):
            if f"{ours}.{part}" in d:
                out[f"{sai}.{part}"] = change(d.pop(f"{ours}.{part}"))

    for sai, ours in _RENAMED.items():
        move(sai, ours)
    move("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves)
    blocks = sorted({int(k.split(".")[1]) for k in d if k.startswith("transformer_blocks.")})
    for i in blocks:
        old, new = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        last = i == blocks[-1]
        for sai, ours in _BLOCK.items():
            swap = last and sai == "context_block.adaLN_modulation.1"
            move(new + sai, old + ours, swap_halves if swap else (lambda t: t))
        for sai, ours in _NORMS.items():
            if f"{old}{ours}.weight" in d:
                out[f"{new}{sai}.weight"] = d.pop(f"{old}{ours}.weight")
        sides = (
            ("x_block", ("to_q", "to_k", "to_v")),
            ("context_block", ("add_q_proj", "add_k_proj", "add_v_proj")),
        )
        for side, names in sides:
            for part in ("weight", "bias"):
                pieces = [d.pop(f"{old}attn.{name}.{part}") for name in names]
                out[f"{new}{side}.attn.qkv.{part}"] = torch.cat(pieces)
    if d:
        raise AssertionError(f"left unconverted: {sorted(d)[:3]}")
    return {DIFFUSION_MODEL + key: value for key, value in out.items()}


def _clip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder with its projection in transformers' layout (``text_model.``…)."""
    return {
        prefix + (k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}"): v
        for k, v in state.items()
    }


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write demo-sd3's all-in-one file under ``models`` (if missing, or with ``force``)."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    path = models / "checkpoints" / f"{DEMO_SD3_SINGLE}.safetensors"
    if path.exists() and not force:
        return []
    pipe = sd3.build_pipeline()
    transformer = {k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}
    state = sai_state(transformer)
    back = convert_sd3_transformer_checkpoint_to_diffusers(dict(state))
    assert back.keys() == transformer.keys() and all(back[k].equal(transformer[k]) for k in back)
    state |= _clip(pipe.text_encoder.state_dict(), "text_encoders.clip_l.transformer.")
    state |= _clip(pipe.text_encoder_2.state_dict(), "text_encoders.clip_g.transformer.")
    t5 = pipe.text_encoder_3.state_dict()
    state |= {
        f"text_encoders.t5xxl.transformer.{k}": v
        for k, v in t5.items()
        if k != "encoder.embed_tokens.weight"  # (tied to shared.weight)
    }
    vae = dict(pipe.vae.config)
    state |= vae_to_ldm(pipe.vae.state_dict(), vae)
    heads = {"num_attention_heads": flux.TINY_CLIP["num_attention_heads"]}
    config = {
        "transformer": {
            "attention_head_dim": sd3._TRANSFORMER["attention_head_dim"],
            "sample_size": sd3._TRANSFORMER["sample_size"],
        },
        "text_encoder": heads,
        "text_encoder_2": heads | {"hidden_act": "quick_gelu"},
        "vae": {
            k: vae[k] for k in ("norm_num_groups", "sample_size", "scaling_factor", "shift_factor")
        },  # fmt: skip
    }
    with staged(path) as staging:
        tensors = {k: v.contiguous() for k, v in state.items()}
        save_file(tensors, str(staging), metadata={METADATA_KEY: json.dumps(config)})
    return [path]
