"""FLUX.1 as its publishers and civitai ship it: the transformer alone in one file, its text
encoders and VAE beside it in ComfyUI's split layout.

    models/checkpoints/flux1-dev.safetensors    the transformer (BFL's layout, fp8 too), or
    models/checkpoints/flux1-dev-Q8_0.gguf      the same as GGUF (Q8_0 … Q4_K)
    models/text_encoders/clip_l.safetensors     CLIP-L
    models/text_encoders/t5xxl_fp16.safetensors T5-XXL (or t5xxl_fp8_e4m3fn.safetensors)
    models/vae/ae.safetensors                   FLUX.1's autoencoder

The transformer's keys tell FLUX.1 [dev] (a guidance embedding) from [schnell]; Kontext's
transformer has [dev]'s keys, so a file whose name says ``kontext`` is Kontext. A checkpoint
may name other parts in its ``huabu.config`` metadata or ``<name>.json`` sidecar:
``{"files": {"text_encoder_2": "text_encoders/t5xxl_fp8_e4m3fn_scaled.safetensors"}}``
(paths under ``models/``). Nothing here imports torch: the API reads it to refuse a request
for a model with a part missing, naming the file and where it goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.catalog.architectures import Architecture
from huabu.errors import InvalidRequest

#: ComfyUI's prefix of a transformer saved inside a checkpoint (some FLUX.1 files keep it).
DIFFUSION_MODEL = "model.diffusion_model."
#: The suffixes of a transformer-alone checkpoint.
SUFFIXES = (".safetensors", ".gguf")


@dataclass(frozen=True)
class Part:
    """A component that sits beside the transformer: under ``models/<folder>/``, the first of
    ``names`` that exists."""

    component: str
    what: str
    folder: str
    names: tuple[str, ...]


FLUX1_PARTS = (
    Part("text_encoder", "CLIP-L text encoder", "text_encoders", ("clip_l.safetensors",)),
    Part(
        "text_encoder_2",
        "T5-XXL text encoder",
        "text_encoders",
        ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors"),
    ),
    Part("vae", "FLUX.1 VAE", "vae", ("ae.safetensors",)),
)


def transformer_architecture(keys: set[str], name: str) -> Architecture | None:
    """The FLUX.1 family of a transformer-alone file in BFL's layout, or None if it is not one."""
    bare = {key.removeprefix(DIFFUSION_MODEL) for key in keys}
    if "double_blocks.0.img_attn.qkv.weight" not in bare:
        return None
    if "kontext" in name.lower():
        return Architecture.FLUX1_KONTEXT
    if any(key.startswith("guidance_in.") for key in bare):
        return Architecture.FLUX1
    return Architecture.FLUX1_SCHNELL


def parts(path: Path, models: Path, overrides: dict[str, Any]) -> dict[str, Path]:
    """Where each part of the split checkpoint at ``path`` is (``overrides``: its metadata's
    and sidecar's), or InvalidRequest (``model``) naming the first missing and where it goes."""
    named = overrides.get("files", {})
    found = {}
    for part in FLUX1_PARTS:
        if part.component in named:
            candidates = [models / named[part.component]]
        else:
            candidates = [models / part.folder / name for name in part.names]
        present = next((c for c in candidates if c.is_file()), None)
        if present is None:
            where = " or ".join(str(c.relative_to(models)) for c in candidates)
            raise InvalidRequest(
                f"model {path.stem!r} is a transformer alone and needs its {part.what}: put it "
                f"in the model library as models/{where}",
                param="model",
            )
        found[part.component] = present
    return found
