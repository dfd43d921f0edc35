"""demo-flux as FLUX.1 is downloaded: the transformer alone in BFL's layout
(``checkpoints/demo-flux-single.safetensors``) and as GGUF (``checkpoints/demo-flux-gguf.gguf``,
its matrices Q8_0 as city96's files are, the rest F32), its CLIP-L, T5 and VAE beside them in
ComfyUI's split layout (``text_encoders/``, ``vae/``, under demo names that a real
``clip_l.safetensors`` does not collide with). What the shapes of such tiny parts cannot tell
(the rotary axes, CLIP's heads, the VAE's groups and scaling) rides in each file's
``huabu.config`` metadata, as any checkpoint's may.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from huabu.catalog.checkpoints import METADATA_KEY
from huabu.demos import flux
from huabu.demos.ldm_layout import vae_to_ldm
from huabu.demos.sd import staged
from huabu.engine.split_files import (
    BFL_DOUBLE,
    BFL_DOUBLE_NORMS,
    BFL_LINEAR1,
    BFL_RENAMED,
    bfl_to_diffusers,
    swap_halves,
)

DEMO_FLUX_SINGLE = "demo-flux-single"
DEMO_FLUX_GGUF = "demo-flux-gguf"
#: The parts, under ``models/``.
PARTS = {
    "text_encoder": "text_encoders/demo-flux-clip_l.safetensors",
    "text_encoder_2": "text_encoders/demo-flux-t5xxl.safetensors",
    "vae": "vae/demo-flux-ae.safetensors",
}


def bfl_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FLUX.1 transformer's state dict in BFL's layout (``engine.split_files``
    reads it back; the build checks the round trip)."""
    diffusers = dict(state)
    out: dict[str, torch.Tensor] = {}

    def move(new: str, old: str) -> None:
        for part in ("weight", "bias"):
            if f"{new}.{part}" in diffusers:
                out[f"{old}.{part}"] = diffusers.pop(f"{new}.{part}")

    for new, old in BFL_RENAMED.items():
        move(new, old)
    for part in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{part}"] = swap_halves(
            diffusers.pop(f"norm_out.linear.{part}")
        )
    doubles = {int(k.split(".")[1]) for k in diffusers if k.startswith("transformer_blocks.")}
    for i in sorted(doubles):
        new, old = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for to, of in BFL_DOUBLE.items():
            move(new + to, old + of)
        for to, of in BFL_DOUBLE_NORMS.items():
            out[f"{old}{of}.scale"] = diffusers.pop(f"{new}{to}.weight")
        for stream, names in (("img", ("to_q", "to_k", "to_v")),
                              ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):  # fmt: skip
            for part in ("weight", "bias"):
                pieces = [diffusers.pop(f"{new}attn.{name}.{part}") for name in names]
                out[f"{old}{stream}_attn.qkv.{part}"] = torch.cat(pieces)
    singles = {int(k.split(".")[1]) for k in diffusers if k.startswith("single_transformer")}
    for i in sorted(singles):
        new, old = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        move(new + "norm.linear", old + "modulation.lin")
        move(new + "proj_out", old + "linear2")
        out[f"{old}norm.query_norm.scale"] = diffusers.pop(f"{new}attn.norm_q.weight")
        out[f"{old}norm.key_norm.scale"] = diffusers.pop(f"{new}attn.norm_k.weight")
        for part in ("weight", "bias"):
            fused = [diffusers.pop(f"{new}{name}.{part}") for name in BFL_LINEAR1]
            out[f"{old}linear1.{part}"] = torch.cat(fused)
    if diffusers:
        raise AssertionError(f"left unconverted: {sorted(diffusers)[:3]}")
    return out


def _metadata(config: dict[str, Any]) -> dict[str, str]:
    return {METADATA_KEY: json.dumps(config)}


def _write_gguf(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``state`` as a GGUF file: each matrix whose rows split into Q8_0's 32-value blocks
    quantized, as city96's FLUX.1 files are; biases and norms F32."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="flux")
    for key, value in metadata.items():
        writer.add_string(key, value)
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        if data.ndim == 2 and data.shape[1] % 32 == 0:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the split demo-flux (both transformer files and the parts) under ``models``, each
    if missing (or all with ``force``); returns the paths written."""
    single = models / "checkpoints" / f"{DEMO_FLUX_SINGLE}.safetensors"
    quantized = models / "checkpoints" / f"{DEMO_FLUX_GGUF}.gguf"
    parts = {component: models / where for component, where in PARTS.items()}
    written = [p for p in (single, quantized, *parts.values()) if force or not p.exists()]
    if not written:
        return []
    pipe = flux.build_pipeline()
    transformer = {k: v.contiguous() for k, v in pipe.transformer.state_dict().items()}
    state = bfl_state(transformer)
    back = bfl_to_diffusers(dict(state))
    assert back.keys() == transformer.keys() and all(back[k].equal(transformer[k]) for k in back)
    # What the transformer's shapes cannot tell, and where its parts are.
    own = {"transformer": {"axes_dims_rope": flux._TRANSFORMER["axes_dims_rope"]}, "files": PARTS}
    vae_config = dict(pipe.vae.config)
    files: dict[Path, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {
        single: (state, own),
        parts["text_encoder"]: (  # (transformers' own layout, as ComfyUI's clip_l is)
            {f"text_model.{k}": v for k, v in pipe.text_encoder.state_dict().items()},
            {"text_encoder": {"num_attention_heads": flux.TINY_CLIP["num_attention_heads"]}},
        ),
        parts["text_encoder_2"]: (  # (its embedding once: the encoder's is tied to it)
            {
                k: v
                for k, v in pipe.text_encoder_2.state_dict().items()
                if k != "encoder.embed_tokens.weight"
            },
            {},
        ),
        parts["vae"]: (
            {
                k.removeprefix("first_stage_model."): v
                for k, v in vae_to_ldm(pipe.vae.state_dict(), vae_config).items()
            },
            {
                "vae": {
                    k: vae_config[k]
                    for k in ("norm_num_groups", "sample_size", "scaling_factor", "shift_factor")
                }
            },  # fmt: skip
        ),
    }
    for path in written:
        with staged(path) as staging:
            if path == quantized:
                _write_gguf(staging, state, _metadata(own))
            else:
                tensors, config = files[path]
                tensors = {k: v.contiguous() for k, v in tensors.items()}
                save_file(tensors, str(staging), metadata=_metadata(config) if config else None)
    return written
