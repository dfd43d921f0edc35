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

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinInpaintPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    FluxImg2ImgPipeline,
    FluxInpaintPipeline,
    FluxKontextInpaintPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    QwenImageEditInpaintPipeline,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImagePipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3Pipeline,
    ZImageImg2ImgPipeline,
    ZImageInpaintPipeline,
    ZImagePipeline,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from PIL import Image
from transformers import AutoTokenizer

from huabu.catalog.architectures import Architecture
from huabu.catalog.library import ModelEntry, ModelLibrary
from huabu.engine import flow_sampling, memory_plan, split_files
from huabu.engine.adapters import LoraSwitch
from huabu.engine.inpainting import InpaintPlan
from huabu.engine.previews import approx_flow
from huabu.engine.variation import crop_latents, upscale_image, upscale_latents
from huabu.engine.vision_prompts import VisionPrompts
from huabu.errors import InvalidRequest, ModelUnavailable
from huabu.native import GenerationRequest, ImageRef
from huabu.native.prompt_syntax import parse_weights

#: (text-to-image, image-to-image, inpainting) pipeline classes per family (None: the family
#: does not inpaint here).
PIPELINES: dict[Architecture, tuple[Any, Any, Any]] = {
    Architecture.FLUX1: (FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline),
    Architecture.FLUX1_SCHNELL: (FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline),
    # Kontext reads the image to edit beside the prompt: one pipeline for both.
    Architecture.FLUX1_KONTEXT: (
        FluxKontextPipeline,
        FluxKontextPipeline,
        FluxKontextInpaintPipeline,
    ),
    # [klein] reads its images as references beside the prompt: one pipeline for both.
    Architecture.FLUX2_KLEIN: (Flux2KleinPipeline, Flux2KleinPipeline, Flux2KleinInpaintPipeline),
    Architecture.FLUX2: (Flux2Pipeline, Flux2Pipeline, None),
    Architecture.SD3: (
        StableDiffusion3Pipeline,
        StableDiffusion3Img2ImgPipeline,
        StableDiffusion3InpaintPipeline,
    ),
    Architecture.Z_IMAGE: (ZImagePipeline, ZImageImg2ImgPipeline, ZImageInpaintPipeline),
    Architecture.QWEN_IMAGE: (
        QwenImagePipeline,
        QwenImageImg2ImgPipeline,
        QwenImageInpaintPipeline,
    ),
    # Text to image through Qwen-Image's pipeline; an image is the image to edit (Edit Plus,
    # 2509 and after, named so in the folder's model_index.json: ``_EDITORS``).
    Architecture.QWEN_IMAGE_EDIT: (
        QwenImagePipeline,
        QwenImageEditPipeline,
        QwenImageEditInpaintPipeline,
    ),
}
#: The edit pipelines a Qwen-Image-Edit folder may name.
_EDITORS = {cls.__name__: cls for cls in (QwenImageEditPipeline, QwenImageEditPlusPipeline)}


def _cfg(request: GenerationRequest) -> dict[str, Any]:
    """SD 3's guidance: A1111's CFG scale, with the negative prompt."""
    return {
        "guidance_scale": request.guidance,
        "negative_prompt": plain_prompt(request.negative_prompt),
    }


def _cfg_from_zero(request: GenerationRequest) -> dict[str, Any]:
    """Z-Image's ``pos + g (pos - neg)`` is A1111's ``neg + c (pos - neg)`` with g = c - 1."""
    return _cfg(request) | {"guidance_scale": request.guidance - 1}


def _true_cfg(request: GenerationRequest) -> dict[str, Any]:
    """Qwen-Image's true CFG runs only with a negative prompt given (a space for an empty one,
    as diffusers asks)."""
    if request.guidance <= 1:
        return {"true_cfg_scale": 1.0, "negative_prompt": None}
    negative = plain_prompt(request.negative_prompt) or " "
    return {"true_cfg_scale": request.guidance, "negative_prompt": negative}


def _klein(request: GenerationRequest) -> dict[str, Any]:
    """FLUX.2 [klein]'s guidance: the base model's CFG, with the negative prompt (the
    distilled one has none: ``_check_guidance``)."""
    if request.guidance <= 1:
        return {"guidance_scale": 1.0}
    return {
        "guidance_scale": request.guidance,
        "negative_prompt": plain_prompt(request.negative_prompt),
    }


def _check_guidance(model: FlowModel, request: GenerationRequest) -> None:
    """A distilled [klein] has no CFG: its pipeline would ignore a guidance above 1."""
    if request.guidance != 1 and model.txt2img.config.get("is_distilled", False):
        raise InvalidRequest(
            f"guidance: {model.entry.name} is a distilled {model.architecture.label} model and "
            "has no CFG (nor a negative prompt); send 1 or leave it out",
            param="guidance",
        )


def _flux2(request: GenerationRequest) -> dict[str, Any]:
    """FLUX.2 [dev]'s guidance: its guidance embedding, fed the distilled guidance."""
    return {"guidance_scale": request.distilled_guidance}


#: The families whose pipelines encode the prompt themselves (``_prompted_sample``), and their
#: guidance arguments for a request.
_PROMPTED = {
    Architecture.FLUX2_KLEIN: _klein,
    Architecture.FLUX2: _flux2,
    Architecture.SD3: _cfg,
    Architecture.Z_IMAGE: _cfg_from_zero,
    Architecture.QWEN_IMAGE: _true_cfg,
    Architecture.QWEN_IMAGE_EDIT: _true_cfg,
}


@dataclass
class FlowModel:
    """A flow-family checkpoint in memory (leased like a ``LoadedModel``)."""

    entry: ModelEntry
    architecture: Architecture
    txt2img: Any
    img2img: Any
    model_hash: str | None
    loras: LoraSwitch
    #: How its weights fit the device (HUABU_QUANTIZE, HUABU_OFFLOAD).
    memory: memory_plan.MemoryPlan
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    leases: int = 0

    @property
    def components(self) -> dict[str, Any]:
        return self.txt2img.components


def load(
    entry: ModelEntry,
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    model_hash: str | None,
    library: ModelLibrary,
) -> FlowModel:
    """The diffusers folder at ``path`` as a ``FlowModel`` on ``device``; its LoRAs come from
    ``library`` (diffusers' loaders read the kohya, ai-toolkit and diffusers layouts)."""
    architecture = entry.architecture
    if architecture is None:  # (only the flow families come here: pipelines' _load)
        raise ModelUnavailable(f"{entry.name}: not a flow-matching model")
    txt2img_class, img2img_class, _ = PIPELINES[architecture]
    if device.type == "cuda":  # published and run in bf16 (fp16 overflows in T5 and FLUX.1)
        dtype = torch.bfloat16
    itemsize = torch.finfo(dtype).bits // 8
    try:
        if entry.layout == "single-file":  # a transformer alone, its parts beside it
            files = library.parts(entry)
            parts = split_files.load_parts(
                architecture, path, files, dtype, library.settings.cache_dir
            )
            pipe = txt2img_class(**parts)
            inside = any(prefix for _, prefix in files.values())  # (SAI's: keys by part)
            transformer = split_files.DIFFUSION_MODEL if inside else ""
            sizes = {"transformer": memory_plan.file_bytes(path, itemsize, transformer)} | {
                name: memory_plan.file_bytes(file, itemsize, prefix)
                for name, (file, prefix) in files.items()
            }
        elif architecture is Architecture.QWEN_IMAGE_EDIT:
            pipe, editor = _qwen_editor(path, dtype)
            sizes = memory_plan.component_bytes(path, itemsize)
        elif architecture is Architecture.FLUX2:
            # Its tokenizer folder holds Mistral's tokenizer in a PixtralProcessor, which will
            # not construct without torchvision; the pipeline needs only the tokenizer.
            pipe = Flux2Pipeline.from_pretrained(
                path, tokenizer=None, dtype=dtype, local_files_only=True
            )
            pipe.register_modules(tokenizer=AutoTokenizer.from_pretrained(path / "tokenizer"))
            sizes = memory_plan.component_bytes(path, itemsize)
        elif entry.layout == "diffusers":
            pipe = txt2img_class.from_pretrained(path, dtype=dtype, local_files_only=True)
            sizes = memory_plan.component_bytes(path, itemsize)
        else:
            raise ModelUnavailable(f"{entry.name}: {architecture.label} models cannot be pickles")
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(
            f"model {entry.name!r} cannot be loaded: its files are incomplete or damaged (the "
            "server log has the details)"
        ) from exc
    memory = memory_plan.plan_for(library.settings, sizes, device, gguf=path.suffix == ".gguf")
    memory_plan.apply(pipe, memory, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    if architecture is Architecture.QWEN_IMAGE_EDIT:
        img2img = editor(**pipe.components, processor=pipe.processor)
    else:
        img2img = img2img_class(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    loras = LoraSwitch(pipe, library)
    return FlowModel(entry, architecture, pipe, img2img, model_hash, loras, memory)


def _qwen_editor(path: Path, dtype: torch.dtype) -> tuple[Any, type]:
    """A Qwen-Image-Edit folder as Qwen-Image's text-to-image pipeline (its ``processor``
    attached: ``vision_prompts``) and the edit pipeline class its model_index names."""
    index = json.loads((path / "model_index.json").read_text())
    editor = _EDITORS.get(index.get("_class_name", ""), QwenImageEditPipeline)
    pipe = QwenImagePipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    pipe.processor = VisionPrompts.load(path / "processor")
    return pipe, editor


#: The latent map of each family's VAE for live previews (``engine.previews.FLOW_MAPS``):
#: Z-Image uses FLUX's VAE, Qwen-Image Wan 2.1's.
_PREVIEW_MAPS = {
    Architecture.FLUX1: "flux",
    Architecture.FLUX1_SCHNELL: "flux",
    Architecture.FLUX1_KONTEXT: "flux",
    Architecture.Z_IMAGE: "flux",
    Architecture.SD3: "sd3",
    Architecture.QWEN_IMAGE: "wan",
    Architecture.QWEN_IMAGE_EDIT: "wan",
    Architecture.FLUX2: "flux2",
    Architecture.FLUX2_KLEIN: "flux2",
}


def previewer(model: FlowModel, request: GenerationRequest) -> Callable[[Any], Image.Image] | None:
    """How one image's latents, as ``model``'s pipeline hands them to its step callback,
    become a live preview (None: none for the family): made ``[C, h, w]`` (``_spatial``),
    then through the family's map."""
    vae = _PREVIEW_MAPS[model.architecture]
    return lambda latents: approx_flow(_spatial(model, request, latents)[0], vae)


def plain_prompt(prompt: str) -> str:
    """An A1111 prompt's text without its emphasis: what a T5 or LLM encoder reads."""
    return "".join(" " if weight < 0 else text for text, weight in parse_weights(prompt)).strip()


@dataclass(frozen=True)
class Sampled:
    images: list[Image.Image]
    #: Seconds encoding the prompt, and sampling and decoding (one pipeline call).
    prompt: float
    sample: float
    #: With ``generate(..., latent=True)``: the undecoded latents ``[B, C, h, w]`` (as the
    #: transformer sees them, unpacked) instead of images.
    latents: torch.Tensor | None = None


def generate(
    model: FlowModel,
    request: GenerationRequest,
    source: Image.Image | torch.Tensor | None,
    callback: Any,
    plan: InpaintPlan | None = None,
    *,
    latent: bool = False,
) -> Sampled:
    """Run ``request`` (fitted to the family) on ``model``; ``source`` is the image-to-image
    source at the output size, ``plan`` an inpainting's (the family's inpainting pipeline,
    pasted back as on SD); ``callback`` is diffusers' ``callback_on_step_end``. Euler runs
    through the diffusers pipeline itself, the other samplers in ``flow_sampling``'s loop. A
    ``source`` may be latents (the hires fix's latent upscale); ``latent`` returns the
    latents undecoded (``Sampled.latents``)."""
    _check_guidance(model, request)
    output = "latent" if latent else "pil"
    pipe = model.img2img if source is not None else model.txt2img
    if plan is not None:  # (fit: only the families with an inpainting pipeline here)
        pipe = PIPELINES[model.architecture][2](**model.img2img.components)
        pipe.set_progress_bar_config(disable=True)
    seeds = request.image_seeds()
    if model.architecture in _PROMPTED:
        guidance = _PROMPTED[model.architecture](request)
        made = _prompted_sample(
            pipe, request, guidance, plan or source, callback, output_type=output
        )
        if latent:
            return replace(made, images=[], latents=_spatial(model, request, made.images))
        if plan is not None:
            # (Qwen-Image-Edit's inpainting pipeline edits at about a megapixel whatever the
            # size asked: its result is brought to that size before the pasting back.)
            size = (request.width, request.height)
            made = replace(
                made,
                images=[
                    plan.paste(i if i.size == size else i.resize(size, Image.Resampling.LANCZOS))
                    for i in made.images
                ],
            )
        return made
    began = time.perf_counter()
    with torch.inference_mode():
        conditioning = _Conditioning.of(pipe, request, len(seeds))
    encoded = time.perf_counter()
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    with torch.inference_mode():
        if plan is not None:  # (fit: Euler only)
            images = _pipeline_sample(pipe, request, conditioning, plan, generators, callback)
            images = [plan.paste(image) for image in images]
        elif request.sampler in flow_sampling.SAMPLERS and not isinstance(
            pipe, FluxKontextPipeline
        ):
            images = _k_sample(pipe, request, conditioning, source, generators, callback, output)
        else:  # Euler (the pipeline's own), or Kontext's loop with a scheduled sampler
            images = _pipeline_sample(
                pipe, request, conditioning, source, generators, callback, output
            )
    if latent:
        latents = _spatial(model, request, images)
        return Sampled([], encoded - began, time.perf_counter() - encoded, latents)
    return Sampled(images, encoded - began, time.perf_counter() - encoded)


def _spatial(model: FlowModel, request: GenerationRequest, latents: Any) -> torch.Tensor:
    """Latents as a pipeline hands them out (to its step callback, or as its latent output)
    as ``[B, C, h, w]``: FLUX's and Qwen-Image's packed tokens unpacked, FLUX.2's patches
    spread back to the VAE's channels, and the one frame of Qwen-Image's video latents."""
    pipe = model.txt2img
    if model.architecture in (Architecture.FLUX2, Architecture.FLUX2_KLEIN):
        # [B, tokens, C × 2 × 2] → [B, C, 2h, 2w]: the VAE's channels, each patch spread out.
        h, w = request.height // 16, request.width // 16
        batch, _, packed = latents.shape
        grid = latents.permute(0, 2, 1).reshape(batch, packed // 4, 2, 2, h, w)
        return grid.permute(0, 1, 4, 2, 5, 3).reshape(batch, packed // 4, 2 * h, 2 * w)
    if latents.dim() == 3:  # [B, tokens, C × 2 × 2]
        latents = pipe._unpack_latents(
            latents, request.height, request.width, pipe.vae_scale_factor
        )
    if latents.dim() == 5:  # [B, C, frames, h, w]
        latents = latents[:, :, 0]
    return latents


def _sampled_by(pipe: Any, sampler: str, generators: list[torch.Generator]) -> Any:
    """``pipe`` for Euler (its own), or a copy of it (the same components) whose scheduler
    steps by ``sampler`` (``flow_sampling.SamplerScheduler``)."""
    if sampler == "Euler":
        return pipe
    scheduler = flow_sampling.SamplerScheduler.of(pipe.scheduler.config, sampler, generators)
    copy = type(pipe)(**(pipe.components | {"scheduler": scheduler}))
    copy.set_progress_bar_config(disable=True)
    return copy


def hires_passes(request: GenerationRequest) -> tuple[GenerationRequest, GenerationRequest]:
    """The hires fix's two passes on a flow family: the first at the request's size, and the
    image-to-image pass at the final size (A1111's sizes, in the family's multiples of 16),
    with the hires steps and strength."""
    assert request.hires is not None
    _, final = request.hires.sizes(request.width, request.height)
    first = request.model_copy(update={"hires": None})
    second = first.model_copy(
        update={
            "width": final[0] // 16 * 16,
            "height": final[1] // 16 * 16,
            "steps": request.hires.steps or request.steps,
            "strength": request.hires.strength,
            "init_image": ImageRef(key="hires"),
        }
    )
    return first, second


def hires_latents(latents: torch.Tensor, request: GenerationRequest, second: GenerationRequest):
    """First-pass latents upscaled by the hires fix's latent mode, then cut to the second
    pass's size around their centre (A1111's latent upscale, on the transformer's latents)."""
    assert request.hires is not None
    upscaled, _ = request.hires.sizes(request.width, request.height)
    return crop_latents(
        upscale_latents(latents, request.hires.upscaler, upscaled), (second.width, second.height)
    )


def hires_source(
    image: Image.Image, request: GenerationRequest, second: GenerationRequest, models: Any = None
):
    """A first-pass image upscaled as the hires fix asks (Lanczos, Nearest, or a model
    upscaler of ``models``), then cut to the second pass's size around its centre."""
    assert request.hires is not None
    upscaled, _ = request.hires.sizes(request.width, request.height)
    big = upscale_image(image, request.hires.upscaler, upscaled, models)
    left, top = (big.width - second.width) // 2, (big.height - second.height) // 2
    return big.crop((left, top, left + second.width, top + second.height))


def image_to_image_steps(request: GenerationRequest) -> int:
    """The steps a flow pipeline's image-to-image pass runs: ``strength`` of the schedule,
    as diffusers trims it (its start rounded down)."""
    return request.steps - int(max(request.steps - request.steps * request.strength, 0))


def generate_many(model: FlowModel, requests: list[GenerationRequest], callback: Any) -> Sampled:
    """Text-to-image requests of one batch key and the same guidance (fitted) in one pipeline
    call, their images in order: each keeps its own prompt, negative prompt and seeds, and is
    the image its request gets alone, up to the rounding of batched arithmetic."""
    pipe = model.txt2img
    _check_guidance(model, requests[0])  # (a batch shares its guidance)
    merged = requests[0].model_copy(update={"n_images": sum(r.n_images for r in requests)})
    seeds = [seed for request in requests for seed in request.image_seeds()]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    if model.architecture in _PROMPTED:
        family = _PROMPTED[model.architecture]
        guidance = family(merged)
        if guidance.get("negative_prompt") is not None:
            guidance["negative_prompt"] = [
                family(r)["negative_prompt"] for r in requests for _ in range(r.n_images)
            ]
        prompts = [plain_prompt(r.prompt) for r in requests for _ in range(r.n_images)]
        return _prompted_sample(pipe, merged, guidance, None, callback, prompts, generators)
    began = time.perf_counter()
    with torch.inference_mode():
        conditioning = _Conditioning.joined(
            [_Conditioning.of(pipe, request, request.n_images) for request in requests]
        )
    encoded = time.perf_counter()
    with torch.inference_mode():
        if merged.sampler in flow_sampling.SAMPLERS:
            images = _k_sample(pipe, merged, conditioning, None, generators, callback)
        else:
            images = _pipeline_sample(pipe, merged, conditioning, None, generators, callback)
    return Sampled(images, encoded - began, time.perf_counter() - encoded)


@dataclass(frozen=True)
class _Conditioning:
    """A request's encoded prompts, once per image; the negative side with true CFG only."""

    prompt: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor
    negative: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None

    @classmethod
    def of(cls, pipe: Any, request: GenerationRequest, count: int) -> _Conditioning:
        negative = None
        if request.guidance > 1:
            # True classifier-free guidance, with the negative prompt (empty or not) as the
            # unconditional side, as Forge's CFG scale runs on FLUX.
            negative = _encode(pipe, request.negative_prompt, count)
        return cls(*_encode(pipe, request.prompt, count), negative)

    @classmethod
    def joined(cls, parts: list[_Conditioning]) -> _Conditioning:
        """Several requests' conditionings as one batch (all with true CFG or none)."""
        negative = None
        if parts[0].negative is not None:
            negatives = [part.negative for part in parts if part.negative is not None]
            negative = (
                torch.cat([n[0] for n in negatives]),
                torch.cat([n[1] for n in negatives]),
                negatives[0][2],
            )
        return cls(
            torch.cat([part.prompt for part in parts]),
            torch.cat([part.pooled for part in parts]),
            parts[0].text_ids,
            negative,
        )


def _encode(pipe: Any, prompt: str, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A prompt's (sequence, pooled) embeddings, once per image, and its text ids."""
    sequence, pooled, text_ids = pipe.encode_prompt(
        plain_prompt(prompt), device=pipe.device, num_images_per_prompt=1
    )
    return sequence.repeat(count, 1, 1), pooled.repeat(count, 1), text_ids


def _pipeline_sample(
    pipe, request, conditioning: _Conditioning, source, generators, callback, output="pil"
):
    """The pipeline's own call; ``source`` an image-to-image source or an ``InpaintPlan``."""
    pipe = _sampled_by(pipe, request.sampler, generators)
    extra: dict[str, Any] = {}
    if conditioning.negative is not None:
        negative, negative_pooled, _ = conditioning.negative
        extra = {
            "true_cfg_scale": request.guidance,
            "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    kept = {"_auto_resize": False, "max_area": request.width * request.height}
    if isinstance(source, InpaintPlan):
        extra |= {"image": source.start, "mask_image": source.mask, "strength": request.strength}
        if isinstance(pipe, FluxKontextInpaintPipeline):  # the image is its own reference
            extra |= kept
    elif isinstance(pipe, FluxKontextPipeline):
        # The image to edit, as given at the output size (not moved to one of the sizes
        # Kontext was trained at), and that size kept (the pipeline scales every size to 1024²
        # unless told the area): the caller chose the size.
        extra |= {"image": source} | kept
    elif source is not None:
        extra |= {"image": source, "strength": request.strength}
    return pipe(
        prompt_embeds=conditioning.prompt,
        pooled_prompt_embeds=conditioning.pooled,
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        guidance_scale=request.distilled_guidance,
        generator=generators,
        callback_on_step_end=callback,
        output_type=output,
        **extra,
    ).images


def _prompted_sample(
    pipe: Any,
    request: GenerationRequest,
    guidance: dict[str, Any],
    source,
    callback,
    prompts: list[str] | None = None,
    generators: list[torch.Generator] | None = None,
    output_type: str = "pil",
) -> Sampled:
    """SD 3.x, Z-Image, Qwen-Image: the pipeline encodes the prompts itself, guided as
    ``guidance`` (the family's arguments, see ``_PROMPTED``); ``source`` an image-to-image
    source or an ``InpaintPlan``; ``prompts`` and ``generators``, one per image, for a batch
    of requests (``generate_many``); the prompt's time is counted in sampling."""
    began = time.perf_counter()
    extra: dict[str, Any] = dict(guidance)
    if (
        isinstance(pipe, (Flux2KleinPipeline, Flux2KleinInpaintPipeline))
        and "negative_prompt" in extra
    ):
        # [klein]'s pipeline runs CFG against an empty prompt unless given the negative's
        # embeddings (one per image in a batch; repeated per image of one request).
        negative = extra.pop("negative_prompt")
        with torch.inference_mode():
            extra["negative_prompt_embeds"] = pipe.encode_prompt(prompt=negative)[0]
    if isinstance(source, InpaintPlan):
        extra |= {"image": source.start, "mask_image": source.mask, "strength": request.strength}
    elif isinstance(pipe, (Flux2KleinPipeline, Flux2Pipeline)):
        if source is not None:  # a reference image (fit: strength 1)
            extra["image"] = [source]
    elif isinstance(pipe, tuple(_EDITORS.values())):
        extra["image"] = source  # the image to edit (fit: strength 1)
    elif source is not None:
        extra |= {"image": source, "strength": request.strength}
    if generators is None:
        generators = [torch.Generator("cpu").manual_seed(s) for s in request.image_seeds()]
    pipe = _sampled_by(pipe, request.sampler, generators)
    with torch.inference_mode():
        images = pipe(
            prompt=prompts if prompts is not None else plain_prompt(request.prompt),
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            num_images_per_prompt=1 if prompts is not None else len(generators),
            generator=generators,
            callback_on_step_end=callback,
            output_type=output_type,
            **extra,
        ).images
    return Sampled(images, 0.0, time.perf_counter() - began)


def _sigmas(pipe: Any, steps: int, image_seq_len: int) -> list[float]:
    """The family's shifted schedule for ``steps`` steps at this image size, ending at 0: the
    sigmas the pipeline's own Euler steps through."""
    config = pipe.scheduler.config
    mu = calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", 1.15),
    )
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(sigmas=list(np.linspace(1.0, 1 / steps, steps)), mu=mu)
    return [float(sigma) for sigma in scheduler.sigmas]


def _k_sample(
    pipe, request, conditioning: _Conditioning, source, generators, callback, output="pil"
):
    """Sample with a ``flow_sampling`` sampler: the pipeline's parts, huabu's loop; ``source``
    an image, or latents ``[B, C, h, w]``; ``output`` "latent": the packed latents."""
    count, width, height = len(generators), request.width, request.height
    channels = pipe.transformer.config.in_channels // 4
    dtype, device = conditioning.prompt.dtype, pipe.device
    packed = None
    if isinstance(source, torch.Tensor):  # latents already (as the pipeline takes them too)
        latents = source.to(device, dtype).repeat(count // source.shape[0], 1, 1, 1)
        packed = pipe._pack_latents(latents, count, channels, *latents.shape[2:])
    elif source is not None:
        # Image-to-image: the source's latents, drawn from each image's generator before its
        # noise (the pipeline's own order, so that Euler here is the pipeline's Euler).
        pixels = pipe.image_processor.preprocess(source, height=height, width=width)
        pixels = pixels.to(device, dtype).repeat(count, 1, 1, 1)
        latents = pipe._encode_vae_image(pixels, generators)
        packed = pipe._pack_latents(latents, count, channels, *latents.shape[2:])
    x, image_ids = FluxPipeline.prepare_latents(
        pipe, count, channels, height, width, dtype, device, generators
    )
    sigmas = _sigmas(pipe, request.steps, x.shape[1])
    if packed is not None:
        # …noised to where the trimmed schedule starts (diffusers' rounding of the start).
        first = int(max(request.steps - min(request.steps * request.strength, request.steps), 0))
        sigmas = sigmas[first:]
        x = sigmas[0] * x + (1 - sigmas[0]) * packed
    guidance = None
    if pipe.transformer.config.guidance_embeds:
        guidance = torch.full([count], request.distilled_guidance, device=device)

    def velocity(x: torch.Tensor, sigma: float, prompt, pooled, text_ids) -> torch.Tensor:
        return pipe.transformer(
            hidden_states=x,
            timestep=torch.full([count], sigma, device=device, dtype=x.dtype),
            guidance=guidance,
            pooled_projections=pooled,
            encoder_hidden_states=prompt,
            txt_ids=text_ids,
            img_ids=image_ids,
            return_dict=False,
        )[0]

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        v = velocity(x, sigma, conditioning.prompt, conditioning.pooled, conditioning.text_ids)
        if conditioning.negative is not None:
            v_negative = velocity(x, sigma, *conditioning.negative)
            v = v_negative + request.guidance * (v - v_negative)
        return x - sigma * v

    def noise() -> torch.Tensor:
        draws = [torch.randn(x.shape[1:], generator=g, dtype=torch.float32) for g in generators]
        return torch.stack(draws).to(device, dtype)

    latest = [x]

    def step(index: int) -> None:
        callback(pipe, index, None, {"latents": latest[0]})

    def watched(x: torch.Tensor, sigma: float) -> torch.Tensor:
        latest[0] = x
        return denoise(x, sigma)

    # Progress counts steps, as the pipeline's Euler does.
    pipe._num_timesteps = len(sigmas) - 1
    x = flow_sampling.SAMPLERS[request.sampler](watched, x, sigmas, noise, step)
    if output == "latent":
        return x
    latents = pipe._unpack_latents(x, height, width, pipe.vae_scale_factor)
    latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
    decoded = pipe.vae.decode(latents, return_dict=False)[0]
    return pipe.image_processor.postprocess(decoded, output_type="pil")
