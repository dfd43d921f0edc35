"""FLUX.1 and SD 3.x as their publishers and civitai ship them: the transformer in one file, its
text encoders and VAE beside it in ComfyUI's split layout, or inside the same file.

    models/checkpoints/flux1-dev.safetensors    FLUX.1's transformer (BFL's layout, fp8 too), or
    models/checkpoints/flux1-dev-Q8_0.gguf      the same as GGUF (Q8_0 … Q4_K)
    models/text_encoders/clip_l.safetensors     CLIP-L
    models/text_encoders/t5xxl_fp16.safetensors T5-XXL (or t5xxl_fp8_e4m3fn.safetensors)
    models/vae/ae.safetensors                   FLUX.1's autoencoder

    models/checkpoints/sd3.5_large.safetensors  SD 3.x (SAI's layout: the MMDiT, its VAE and,
                                                in an all-in-one file, its text encoders)
    models/text_encoders/clip_l.safetensors, clip_g.safetensors, t5xxl_fp16.safetensors
                                                those not inside it

The transformer's keys tell the family: FLUX.1 [dev] (a guidance embedding) from [schnell],
and SD 3.x (``joint_blocks``). Kontext's transformer has [dev]'s keys, so a FLUX.1 file whose
name says ``kontext`` is Kontext. A checkpoint may name other parts in its ``huabu.config``
metadata or ``<name>.json`` sidecar: ``{"files": {"text_encoder_2":
"text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors"}}`` (paths under ``models/``). Nothing here
imports torch: the API reads it to refuse a request for a model with a part missing, naming
the file and where it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.catalog.architectures import Architecture
from huabu.errors import InvalidRequest

#: The prefix of a transformer saved inside a checkpoint (SAI's files; some FLUX.1 files).
DIFFUSION_MODEL = "model.diffusion_model."
#: The suffixes of a transformer-alone checkpoint.
SUFFIXES = (".safetensors", ".gguf")
_T5 = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors")


@dataclass(frozen=True)
class Part:
    """A component of a split checkpoint: inside the checkpoint under the key prefix
    ``inside`` (SAI's all-in-one files), else under ``models/<folder>/``, the first of
    ``names`` that exists."""

    component: str
    what: str
    folder: str
    names: tuple[str, ...]
    inside: str | None = None


_FLUX1 = (
    Part("text_encoder", "CLIP-L text encoder", "text_encoders", ("clip_l.safetensors",)),
    Part("text_encoder_2", "T5-XXL text encoder", "text_encoders", _T5),
    Part("vae", "FLUX.1 VAE", "vae", ("ae.safetensors",)),
)
_SD3 = (
    Part("text_encoder", "CLIP-L text encoder", "text_encoders", ("clip_l.safetensors",),
         "text_encoders.clip_l.transformer."),
    Part("text_encoder_2", "CLIP-G text encoder", "text_encoders", ("clip_g.safetensors",),
         "text_encoders.clip_g.transformer."),
    Part("text_encoder_3", "T5-XXL text encoder", "text_encoders", _T5,
         "text_encoders.t5xxl.transformer."),
    Part("vae", "SD 3 VAE", "vae", ("sd3_vae.safetensors",), "first_stage_model."),
)  # fmt: skip
#: The parts of each family that loads from split files.
PARTS = {
    Architecture.FLUX1: _FLUX1,
    Architecture.FLUX1_SCHNELL: _FLUX1,
    Architecture.FLUX1_KONTEXT: _FLUX1,
    Architecture.SD3: _SD3,
}


def transformer_architecture(keys: set[str], name: str) -> Architecture | None:
    """The family of a transformer file in BFL's (FLUX.1) or SAI's (SD 3.x) layout, or None."""
    bare = {key.removeprefix(DIFFUSION_MODEL) for key in keys}
    if "joint_blocks.0.x_block.attn.qkv.weight" in bare:
        return Architecture.SD3
    if "double_blocks.0.img_attn.qkv.weight" not in bare:
        return None
    if "kontext" in name.lower():
        return Architecture.FLUX1_KONTEXT
    if any(key.startswith("guidance_in.") for key in bare):
        return Architecture.FLUX1
    return Architecture.FLUX1_SCHNELL


def parts(
    path: Path,
    models: Path,
    overrides: dict[str, Any],
    keys: set[str],
    architecture: Architecture,
) -> dict[str, tuple[Path, str]]:
    """Where each part of the split checkpoint at ``path`` (``keys`` its tensor names,
    ``overrides`` its metadata's and sidecar's) is: (file, key prefix of the part in it, "" for
    a file of its own); InvalidRequest (``model``) naming the first missing and where it goes."""
    named = overrides.get("files", {})
    found = {}
    for part in PARTS[architecture]:
        if (
            part.component not in named
            and part.inside
            and any(key.startswith(part.inside) for key in keys)
        ):
            found[part.component] = (path, part.inside)
            continue
        if part.component in named:
            candidates = [models / named[part.component]]
        else:
            candidates = [models / part.folder / name for name in part.names]
        present = next((c for c in candidates if c.is_file()), None)
        if present is None:
            where = " or ".join(str(c.relative_to(models)) for c in candidates)
            raise InvalidRequest(
                f"model {path.stem!r} needs its {part.what}: put it in the model library as "
                f"models/{where}",
                param="model",
            )
        found[part.component] = (present, "")
    return found
