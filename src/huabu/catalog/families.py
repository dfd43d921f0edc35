"""What each model family can do, and a request fitted to its model's family.

The SD families (1.x, 2.x, SDXL) take everything a ``GenerationRequest`` holds. The flow-matching
transformer families (FLUX, Qwen-Image, Z-Image, SD 3.x) run through diffusers' own pipelines:
they have their own defaults for steps and guidance, their own samplers, and none of SD's
extras (SD ControlNets, IP-Adapters, the SDXL refiner, clip skip, SD embeddings). ``fit`` gives
a request its family's defaults for what the caller left out and refuses, naming the field,
what the family cannot do, so that no field is ever silently ignored. Pure: the API process
calls it at submit, the engine again before it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from huabu.catalog.architectures import Architecture
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest
from huabu.native.generation import (
    ETA_ANY,
    ETA_OFF,
    ETA_ONE,
    IMAGE_UPSCALERS,
    LATENT_UPSCALERS,
    canonical_sampler,
)
from huabu.native.prompt_syntax import has_and, is_scheduled


@dataclass(frozen=True)
class Family:
    architecture: Architecture
    #: Defaults for a request that does not say (None: the request's own default).
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    #: The sampler names it runs (None: every SD sampler).
    samplers: tuple[str, ...] | None = None
    #: Image-to-image from an init image, and inpainting with a mask.
    img2img: bool = True
    inpaint: bool = True
    #: Whether LoRAs apply (diffusers' LoRA loaders for the family's pipeline).
    loras: bool = True
    #: What width and height must be multiples of (the latent's 8 × the transformer's patch).
    multiple: int = 8
    #: The default distilled guidance of a guidance-distilled family (None: it has none).
    distilled_guidance: float | None = None
    #: An editing family: ``init_image`` is the image to edit, which the model reads beside
    #: the prompt while it generates from noise (no image-to-image strength).
    edits: bool = False
    #: Whether the hires fix's latent upscalers run (its image-to-image pipeline starts from
    #: latents as they come out of its first pass).
    latent_hires: bool = True
    #: Whether a negative prompt is read (with true CFG).
    negative: bool = True
    #: Whether ``guidance`` (A1111's CFG scale) means anything to it: False for a family
    #: guided by its guidance embedding alone, whose pipeline has no CFG.
    cfg: bool = True

    @property
    def label(self) -> str:
        return self.architecture.label


_SD = Family(Architecture.SD1)
#: The A1111 names with a flow-matching form (see engine.flow_sampling): Euler, the families'
#: reference sampler, first.
_FLOW_SAMPLERS = ("Euler", "Euler a", "Heun", "DPM2", "DPM++ 2M")
#: Those the families whose pipelines keep their own loop run: Euler, the pipeline's own, and
#: those a scheduler steps (one model call per step; see engine.flow_sampling.SamplerScheduler).
SCHEDULED = ("Euler", "Euler a", "DPM++ 2M")


def _flow(architecture: Architecture, steps: int, guidance: float, **more: Any) -> Family:
    """A flow family: Euler by default, sizes in 16s (the latent's 8 × 2×2 patches); unless
    ``more`` says otherwise, the samplers its pipeline's own loop can step."""
    rules: dict[str, Any] = {"samplers": SCHEDULED} | more
    return Family(architecture, steps, guidance, sampler="Euler", multiple=16, **rules)


FAMILIES = {
    family.architecture: family
    for family in (
        # True CFG off: FLUX.1 [dev] is guided by its distilled guidance.
        _flow(Architecture.FLUX1, 28, 1.0, distilled_guidance=3.5, samplers=_FLOW_SAMPLERS),
        # Timestep-distilled: 4 steps, no guidance of either kind needed.
        _flow(Architecture.FLUX1_SCHNELL, 4, 1.0, samplers=_FLOW_SAMPLERS),
        # Kontext [dev]'s published use: 28 steps, distilled guidance 2.5; FLUX.1's LoRAs;
        # inpainting is an edit inside the mask.
        _flow(Architecture.FLUX1_KONTEXT, 28, 1.0, distilled_guidance=2.5, edits=True),
        # FLUX.2 [klein] (distilled): 4 steps, no CFG; an image is a reference to edit from,
        # and with a mask it is edited inside it. The base [klein] takes CFG and a negative
        # prompt (the distilled one refuses guidance above 1 where it runs: engine.flow).
        _flow(Architecture.FLUX2_KLEIN, 4, 1.0, edits=True),
        # FLUX.2 [dev]'s published use: 50 steps, guidance 4 through its guidance embedding;
        # images are references to edit from (diffusers has no inpainting pipeline for it).
        _flow(
            Architecture.FLUX2,
            50,
            1.0,
            distilled_guidance=4.0,
            edits=True,
            inpaint=False,
            negative=False,
            cfg=False,
        ),
        # SD 3.5 Large's published defaults: true CFG 3.5, 28 steps, with a negative prompt.
        _flow(Architecture.SD3, 28, 3.5),
        # Qwen-Image's published defaults: 50 steps, true CFG 4 with a negative prompt.
        # (Its image-to-image pipeline takes its video VAE's 5-D latents: the hires fix
        # upscales the decoded image.)
        _flow(Architecture.QWEN_IMAGE, 50, 4.0, latent_hires=False),
        # Qwen-Image-Edit's published use: Qwen-Image's (50 steps, true CFG 4); an image is the
        # image to edit, which its text encoder sees too; Qwen-Image's LoRAs.
        _flow(Architecture.QWEN_IMAGE_EDIT, 50, 4.0, edits=True, latent_hires=False),
        # Z-Image Turbo's published use: 9 steps (8 model calls), no CFG.
        # (Its image-to-image pipeline preprocesses latents as an image: the same.)
        _flow(Architecture.Z_IMAGE, 9, 1.0, latent_hires=False),
    )
}

#: The fields only the SD families read, and how a refusal names them.
_SD_ONLY = (
    ("sd_upscale", "SD upscale script"),
    ("controlnets", "SD ControlNet units"),
    ("ip_adapter", "IP-Adapter"),
    ("refiner", "SDXL refiner"),
    ("embeddings", "SD textual-inversion embeddings"),
    ("vae", "override VAE"),
    ("tiling", "tiling yet"),
)


def family_of(architecture: Architecture | None) -> Family:
    """The family's rules (an SD family's, or one whose architecture is unknown: the SD
    loaders decide what loads)."""
    if architecture is None or not architecture.is_flow:
        return _SD
    return FAMILIES[architecture]


def fit(request: GenerationRequest, architecture: Architecture | None) -> GenerationRequest:
    """``request`` with its family's defaults where it left a field out; InvalidRequest
    naming the first field the family cannot honour."""
    family = family_of(architecture)
    if family.distilled_guidance is None and request.distilled_guidance is not None:
        label = architecture.label if architecture else "these"
        raise InvalidRequest(
            f"distilled_guidance: {label} models have no distilled guidance; guidance is their "
            "CFG scale",
            param="distilled_guidance",
        )
    if family is _SD:
        return request
    given = request.model_fields_set
    defaults = {
        name: value
        for name, value in (
            ("steps", family.steps),
            ("guidance", family.guidance),
            ("sampler", family.sampler),
        )
        if value is not None and name not in given
    }
    if request.distilled_guidance is None and family.distilled_guidance is not None:
        defaults["distilled_guidance"] = family.distilled_guidance  # also when sent as null
    if family.edits and request.init_image is not None:
        if "strength" in given and request.strength != 1:
            raise InvalidRequest(
                f"strength: {family.label} models edit the image as the prompt says, generating "
                f"the whole picture anew; they have no image-to-image strength (send 1 or leave "
                f"it out)",
                param="strength",
            )
        defaults["strength"] = 1.0
    request = request.model_copy(update=defaults)
    for name in ("width", "height"):
        if getattr(request, name) % family.multiple:
            raise InvalidRequest(
                f"{name} must be a multiple of {family.multiple} for {family.label} models, got "
                f"{getattr(request, name)}",
                param=name,
            )
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if is_scheduled(text) or (name == "prompt" and has_and(text)):
            raise InvalidRequest(
                f"{name}: prompt editing [from:to:when], alternation [a|b] and AND run on "
                f"SD 1.x, 2.x and SDXL models; {family.label} models read the prompt as text "
                f"(write 'and' in lower case, and \\[ \\] for literal brackets)",
                param=name,
            )
    for name, what in _SD_ONLY:
        if getattr(request, name):
            raise InvalidRequest(f"{name}: {family.label} models take no {what}", param=name)
    if request.hires is not None:
        if request.hires.strength == 0:
            raise InvalidRequest(
                f"hires.strength: {family.label} models refine the hires pass with a strength "
                f"above 0",
                param="hires.strength",
            )
        if family.edits:
            raise InvalidRequest(
                f"hires: {family.label} models edit an image; they take no hires fix",
                param="hires",
            )
        if request.hires.upscaler in LATENT_UPSCALERS and not family.latent_hires:
            raise InvalidRequest(
                f"hires.upscaler: {family.label} models upscale the decoded image in the hires "
                f"fix: {', '.join(IMAGE_UPSCALERS)}",
                param="hires.upscaler",
            )
    if request.loras and not family.loras:
        raise InvalidRequest(f"loras: {family.label} models take no LoRAs yet", param="loras")
    if not family.cfg and request.guidance != 1:
        raise InvalidRequest(
            f"guidance: {family.label} models are guided by their guidance embedding "
            f"(distilled_guidance) and have no CFG; send 1 or leave it out",
            param="guidance",
        )
    try:
        sampler = canonical_sampler(request.sampler)
    except InvalidRequest:
        sampler = request.sampler  # unknown: refused by name further on
    if request.eta not in (None, 1) and sampler in (ETA_ANY | ETA_ONE | set(ETA_OFF)):
        raise InvalidRequest(
            f"eta: {family.label} models' {sampler} runs with eta 1 here "
            "(samplers without noise ignore eta, as in A1111)",
            param="eta",
        )
    if request.clip_skip != 1:
        raise InvalidRequest(
            f"clip_skip: {family.label} models do not skip text-encoder layers", param="clip_skip"
        )
    if request.subseed_strength > 0:
        raise InvalidRequest(
            f"subseed_strength: variation seeds are not available for {family.label} models yet",
            param="subseed_strength",
        )
    if request.negative_prompt.strip() and not family.negative:
        raise InvalidRequest(
            f"negative_prompt: {family.label} models take no negative prompt here",
            param="negative_prompt",
        )
    if request.negative_prompt.strip() and request.guidance <= 1:
        raise InvalidRequest(
            f"negative_prompt: {family.label} models read a negative prompt only with true "
            f"classifier-free guidance: set guidance above 1 (twice the work per step)",
            param="negative_prompt",
        )
    if request.init_image is not None and not family.img2img:
        raise InvalidRequest(
            f"init_image: {family.label} models do not take an init image", param="init_image"
        )
    if request.inpaint is not None and not family.inpaint:
        raise InvalidRequest(f"inpaint: {family.label} models do not inpaint", param="inpaint")
    if request.inpaint is not None and request.sampler.strip().lower() not in {
        s.lower() for s in SCHEDULED
    }:
        raise InvalidRequest(
            f"sampler: inpainting on {family.label} models runs in its pipeline's loop, with "
            f"{', '.join(SCHEDULED)}",
            param="sampler",
        )
    samplers = family.samplers
    if samplers is not None and request.sampler.strip().lower() not in {
        s.lower() for s in samplers
    }:
        raise InvalidRequest(
            f"sampler {request.sampler!r} has no flow-matching form for {family.label} models; "
            f"these work: {', '.join(samplers)}",
            param="sampler",
        )
    return request


def check_lora(
    model: Architecture | None, lora: Architecture | None, *, name: str, param: str
) -> None:
    """A LoRA made for a flow family runs on that family only, and an SD LoRA on no flow
    family (between the SD families, where the files can mislead, the loader decides)."""
    if model is None or lora is None or not (model.is_flow or lora.is_flow):
        return
    if model.lora_family is lora.lora_family:
        return
    raise InvalidRequest(
        f"{param}: LoRA {name!r} was made for {lora.label} models, not {model.label}", param=param
    )
