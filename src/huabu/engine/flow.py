"""The flow-matching transformer families (FLUX.1 …), run through diffusers' own pipelines.

huabu does not re-implement these models: a request becomes one call of the family's diffusers
pipeline (text-to-image, or image-to-image from the same weights), with a generator per image
so that image i is the image its seed gives alone (A1111's seed + i), and the step callback
reporting progress and stopping a cancelled run.

Prompts: these families read text with T5 or an LLM, which have no A1111 emphasis, so
``(word:1.3)`` and ``[word]`` give their words unweighted and ``BREAK`` is a space (the same
text, never an error). What a family cannot do is refused before anything loads
(:func:`huabu.catalog.families.fit`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import FluxImg2ImgPipeline, FluxPipeline
from PIL import Image

from huabu.catalog.architectures import Architecture
from huabu.catalog.library import ModelEntry
from huabu.engine.prompts import parse_weights
from huabu.errors import ModelUnavailable
from huabu.native import GenerationRequest

#: (text-to-image, image-to-image) pipeline classes per family.
PIPELINES: dict[Architecture, tuple[Any, Any]] = {
    Architecture.FLUX1: (FluxPipeline, FluxImg2ImgPipeline),
}


@dataclass
class FlowModel:
    """A flow-family checkpoint in memory (leased like a ``LoadedModel``)."""

    entry: ModelEntry
    architecture: Architecture
    txt2img: Any
    img2img: Any
    model_hash: str | None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    leases: int = 0

    @property
    def components(self) -> dict[str, Any]:
        return self.txt2img.components


def load(
    entry: ModelEntry, path: Path, device: torch.device, dtype: torch.dtype, model_hash: str | None
) -> FlowModel:
    """The diffusers folder at ``path`` as a ``FlowModel`` on ``device``."""
    architecture = entry.architecture
    if architecture not in PIPELINES:
        label = architecture.label if architecture else "this family"
        raise ModelUnavailable(f"{entry.name}: {label} models cannot run yet")
    if entry.layout != "diffusers":
        raise ModelUnavailable(
            f"{entry.name}: {architecture.label} models load from a diffusers folder for now"
        )
    txt2img_class, img2img_class = PIPELINES[architecture]
    try:
        pipe = txt2img_class.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"model {entry.name!r} cannot be loaded: its diffusers folder is incomplete or "
            "damaged (the server log has the details)"
        ) from exc
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    img2img = img2img_class(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    return FlowModel(entry, architecture, pipe, img2img, model_hash)


def plain_prompt(prompt: str) -> str:
    """An A1111 prompt's text without its emphasis: what a T5 or LLM encoder reads."""
    return "".join(" " if weight < 0 else text for text, weight in parse_weights(prompt)).strip()


def _encode(pipe: Any, prompt: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt's (sequence, pooled) embeddings, once per image."""
    sequence, pooled, _ = pipe.encode_prompt(
        plain_prompt(prompt), device=pipe.device, num_images_per_prompt=1
    )
    return sequence.repeat(count, 1, 1), pooled.repeat(count, 1)


@dataclass(frozen=True)
class Sampled:
    images: list[Image.Image]
    #: Seconds encoding the prompt, and sampling and decoding (one pipeline call).
    prompt: float
    sample: float


def generate(
    model: FlowModel, request: GenerationRequest, source: Image.Image | None, callback: Any
) -> Sampled:
    """Run ``request`` (fitted to the family) on ``model``; ``source`` is the image-to-image
    source at the output size; ``callback`` is diffusers' ``callback_on_step_end``."""
    pipe = model.img2img if source is not None else model.txt2img
    seeds = request.image_seeds()
    began = time.perf_counter()
    extra: dict[str, Any] = {}
    with torch.inference_mode():
        prompt_embeds, pooled = _encode(pipe, request.prompt, len(seeds))
        if request.guidance > 1:
            # True classifier-free guidance, with the negative prompt (empty or not) as the
            # unconditional side, as Forge's CFG scale runs on FLUX.
            negative, negative_pooled = _encode(pipe, request.negative_prompt, len(seeds))
            extra = {
                "true_cfg_scale": request.guidance,
                "negative_prompt_embeds": negative,
                "negative_pooled_prompt_embeds": negative_pooled,
            }
    encoded = time.perf_counter()
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    if source is not None:
        extra |= {"image": source, "strength": request.strength}
    with torch.inference_mode():
        images = pipe(
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.distilled_guidance,
            generator=generators,
            callback_on_step_end=callback,
            output_type="pil",
            **extra,
        ).images
    return Sampled(images, encoded - began, time.perf_counter() - encoded)
