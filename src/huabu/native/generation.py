"""Generation in huabu's own terms: the request every dialect translates to, and the result
the engine returns."""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from huabu.errors import InvalidRequest, invalid_field
from huabu.native.prompt_syntax import is_composed, is_scheduled

if TYPE_CHECKING:
    from PIL.Image import Image

    from huabu.settings import Settings

#: The A1111 sampler names huabu accepts (spec 003's twenty, plus the DPM++ 2M SDE pair).
SAMPLER_NAMES: tuple[str, ...] = (
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DPM++ 2S a",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM fast",
    "DPM adaptive",
    "LMS Karras",
    "DPM2 Karras",
    "DPM2 a Karras",
    "DPM++ 2S a Karras",
    "DPM++ 2M Karras",
    "DPM++ SDE Karras",
    "DDIM",
    "PLMS",
    "UniPC",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
)
_SAMPLERS_BY_KEY = {name.lower(): name for name in SAMPLER_NAMES}
#: The samplers that call the model twice a step: A1111 counts a prompt's schedule in model
#: calls, over twice the steps, for them.
SECOND_ORDER = frozenset(
    name
    for name in SAMPLER_NAMES
    if name.removesuffix(" Karras") in {"Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ SDE"}
)

OutputFormat = Literal["png", "jpeg", "webp"]
MAX_SEED = 2**32 - 1
#: The largest position a paged listing may start at (PostgreSQL takes OFFSET as a bigint; no
#: caller has this many tasks).
MAX_OFFSET = 10_000_000


def canonical_sampler(name: str) -> str:
    """The canonical spelling of a sampler name (matching ignores case), or InvalidRequest."""
    canonical = _SAMPLERS_BY_KEY.get(name.strip().lower())
    if canonical is None:
        raise InvalidRequest(
            f"unknown sampler {name!r}; valid names: {', '.join(SAMPLER_NAMES)}", param="sampler"
        )
    return canonical


MAX_LORAS = 5
MAX_EMBEDDINGS = 5
MAX_STYLES = 20
#: The longest prompt (or negative prompt) any dialect passes on.
MAX_PROMPT = 16_000
#: The longest model, LoRA, VAE, … name.
MAX_NAME = 255
#: C0 control characters other than tab, line feed and carriage return, and DEL. NUL cannot be
#: stored in PostgreSQL text at all; the others have no business in a prompt or a name.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def printable(value: str) -> str:
    """``value`` if it holds no control characters and no lone surrogate (see ``_CONTROL``),
    else ValueError."""
    found = _CONTROL.search(value)
    if found is not None:
        if "\ud800" <= found[0] <= "\udfff":
            raise ValueError("must not contain an unpaired UTF-16 surrogate (it is not text)")
        raise ValueError("must not contain control characters (NUL and the like)")
    return value


#: Text a user wrote: no control characters. Every string field of the native model is one.
Text = Annotated[str, AfterValidator(printable)]
Prompt = Annotated[Text, Field(max_length=MAX_PROMPT)]
Name = Annotated[Text, Field(min_length=1, max_length=MAX_NAME)]


class ImageRef(BaseModel):
    """An input image. Clients name one of their uploads by its id (a plain string on the wire,
    ``"init_image": "<upload id>"``); the task service checks it is theirs and replaces it with
    the storage ``key`` it lives at, which is what a queued task holds. Never a file path, and
    never a key a client chose: the service refuses keys at submit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upload: uuid.UUID | None = None
    key: str | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _from_upload_id(cls, value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return {"upload": value}
        if isinstance(value, str):
            try:
                return {"upload": uuid.UUID(value.strip())}
            except ValueError:
                raise ValueError(f"{value[:64]!r} is not an upload id") from None
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        if (self.upload is None) == (self.key is None):
            raise ValueError("give an upload id")
        return self

    @model_serializer
    def _compact(self) -> dict[str, str]:
        return {"key": self.key} if self.key is not None else {"upload": str(self.upload)}

    @classmethod
    def stored(cls, key: str) -> ImageRef:
        return cls(key=key)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        # What clients send (the stored form is the service's own, never accepted from them).
        return {"type": "string", "format": "uuid", "description": "An upload's id."}


class LoraRef(BaseModel):
    """A LoRA from ``models/loras`` and its strength (0 = off, 1 = as trained)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    weight: float = Field(default=1.0, ge=-4, le=4)


MAX_CONTROLNETS = 3


class ControlUnit(BaseModel):
    """One ControlNet: a model from ``models/controlnet``, its input image, how to preprocess
    it, how strongly and when to apply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Name
    image: ImageRef
    preprocessor: Name = "none"
    scale: float = Field(default=1.0, ge=0, le=2)
    start: float = Field(default=0.0, ge=0, le=1)
    end: float = Field(default=1.0, ge=0, le=1)


class IpAdapterRef(BaseModel):
    """An IP-Adapter from ``models/ipadapter``, its reference image and how strongly the image
    steers the result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Name
    image: ImageRef
    scale: float = Field(default=0.6, ge=0, le=2)


class InpaintRef(BaseModel):
    """Repaint only part of ``init_image``. The mask is white where the image is repainted and
    black where it is kept; it is resized to the output size. See :mod:`huabu.engine.inpainting`
    for what each option does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mask: ImageRef
    #: Gaussian blur of the mask's edges, in pixels.
    blur: int = Field(default=4, ge=0, le=64)
    #: Repaint the black part instead.
    invert: bool = False
    #: What the repainted area starts from: the source's pixels, or the surrounding colours.
    fill: Literal["original", "fill"] = "original"
    #: Generate only the masked area (plus ``padding`` pixels) at the full output size.
    only_masked: bool = False
    padding: int = Field(default=32, ge=0, le=256)


#: A1111's latent upscale modes: (torch interpolate mode, antialias).
LATENT_UPSCALERS = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
#: Upscalers that resize the decoded image (A1111's "None" resizes with Lanczos too).
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")
#: A1111's names for the model upscalers it ships, and the file (stem) each reads from
#: ``models/upscalers/``; any other upscaler there goes by its own file's name.
A1111_UPSCALERS = {
    "R-ESRGAN 4x+": "RealESRGAN_x4plus",
    "R-ESRGAN 4x+ Anime6B": "RealESRGAN_x4plus_anime_6B",
    "R-ESRGAN General 4xV3": "realesr-general-x4v3",
    "R-ESRGAN General WDN 4xV3": "realesr-general-wdn-x4v3",
    "R-ESRGAN AnimeVideo": "realesr-animevideov3",
    "ESRGAN_4x": "ESRGAN_4x",
    "SwinIR 4x": "SwinIR_4x",
    "SwinIR_4x": "SwinIR_4x",
    "DAT x2": "DAT_x2",
    "DAT x3": "DAT_x3",
    "DAT x4": "DAT_x4",
}
#: A1111's upscalers that are not super-resolution nets spandrel reads.
UNSUPPORTED_UPSCALERS = ("LDSR", "ScuNET", "ScuNET GAN", "ScuNET PSNR")


def upscaler_file(name: str) -> str:
    """The library name (file stem) an upscaler's name stands for."""
    return A1111_UPSCALERS.get(name, name)


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    count = max(math.ceil((length - overlap) / (tile - overlap)), 1)
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), length - tile) for i in range(count)]


class SdUpscale(BaseModel):
    """A1111's "SD upscale" script (image-to-image only): the init image upscaled by
    ``scale`` with ``upscaler`` ("None": kept as it is), cut into tiles of the request's size
    overlapping by ``overlap`` pixels, each tile redrawn as image-to-image, and the tiles
    blended back. ``batch_size`` is A1111's: how its seeds advance from tile to tile."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upscaler: Name = "None"
    scale: float = Field(default=2.0, ge=1, le=4)
    overlap: int = Field(default=64, ge=0, le=256)
    batch_size: int = Field(default=1, ge=1, le=8)

    def upscaled(self, width: int, height: int) -> tuple[int, int]:
        """The size an init image of ``width``×``height`` is upscaled to."""
        if self.upscaler == "None":
            return width, height
        return int(width * self.scale), int(height * self.scale)

    def tiles(self, size: tuple[int, int], tile: tuple[int, int]) -> tuple[list[int], list[int]]:
        """Where the tiles of ``tile`` size start across and down an (upscaled) image of
        ``size``, as A1111 places them: spread evenly, the last flush with the edge; or
        InvalidRequest when the image is smaller than a tile, or the overlap not below it."""
        if size[0] < tile[0] or size[1] < tile[1]:
            raise InvalidRequest(
                f"sd_upscale: the upscaled image ({size[0]}x{size[1]}) is smaller than a tile "
                f"(width × height: {tile[0]}x{tile[1]}); raise sd_upscale.scale",
                param="sd_upscale.scale",
            )
        if self.overlap >= min(tile):
            raise InvalidRequest(
                f"sd_upscale.overlap must be below the tile's width and height "
                f"({tile[0]}x{tile[1]})",
                param="sd_upscale.overlap",
            )
        across = _tile_starts(size[0], tile[0], self.overlap)
        down = _tile_starts(size[1], tile[1], self.overlap)
        return across, down

    def tile_seed(self, seed: int, tile: int) -> int:
        """The seed of tile ``tile`` of an image whose seed is ``seed``: A1111 runs the tiles
        in batches of ``batch_size`` from seed + (batch number) up."""
        return seed + tile // self.batch_size + tile % self.batch_size


class HiresFix(BaseModel):
    """A1111's hires fix: generate at the request's size, upscale (in latent space, or the
    decoded image), then refine at the new size as image-to-image with ``strength``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The upscale factor, used when neither resize is given.
    scale: float = Field(default=2.0, ge=1, le=4)
    #: Target width/height (0: from the other, keeping the aspect; both: cover, then crop).
    resize_width: int = Field(default=0, ge=0)
    resize_height: int = Field(default=0, ge=0)
    upscaler: Name = "Latent"
    #: Steps of the second pass (0: the request's steps).
    steps: int = Field(default=0, ge=0)
    #: 0: the upscaled first pass as it is, not refined.
    strength: float = Field(default=0.75, ge=0, le=1)

    def sizes(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(the size to upscale to, the final size after cropping), as A1111 computes them;
        both in multiples of 8."""
        rx, ry = self.resize_width, self.resize_height
        if rx == 0 and ry == 0:
            up = (int(width * self.scale), int(height * self.scale))
            target = up
        elif ry == 0:
            up = target = (rx, rx * height // width)
        elif rx == 0:
            up = target = (ry * width // height, ry)
        else:
            target = (rx, ry)
            if width / height < rx / ry:
                up = (rx, rx * height // width)
            else:
                up = (ry * width // height, ry)
        return (up[0] // 8 * 8, up[1] // 8 * 8), (target[0] // 8 * 8, target[1] // 8 * 8)

    def checked_upscaler(self) -> str:
        """The upscaler's name: a latent mode, an image one, or (found in the library when
        the request is accepted) a model upscaler's."""
        if self.upscaler in UNSUPPORTED_UPSCALERS:
            raise InvalidRequest(
                f"hires.upscaler: {self.upscaler} is not supported; use a latent mode, "
                f"{', '.join(IMAGE_UPSCALERS)} or a model upscaler in models/upscalers/",
                param="hires.upscaler",
            )
        return self.upscaler


class Refiner(BaseModel):
    """SDXL's refiner, as A1111 runs it: the same sampling continues on ``model`` from the
    point where ``switch_at`` of the denoising is done (by timestep: (999 − t)/1000)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Name
    switch_at: float = Field(default=0.8, gt=0, lt=1)
    #: With the hires fix, the pass(es) the refiner takes part in (A1111's option
    #: ``hires_fix_refiner_pass``; its default is the second pass only).
    hires_pass: Literal["first pass", "second pass", "both passes"] = "second pass"

    def in_pass(self, second: bool) -> bool:
        """Whether the refiner takes part in the first pass (or, ``second``, the hires pass)."""
        return self.hires_pass == "both passes" or self.hires_pass == (
            "second pass" if second else "first pass"
        )


#: How eta acts on each sampler that adds noise (A1111 passes it to those whose function has
#: an eta): any value (huabu's k-diffusion ports and DDIM); 1, or 0 for the sampler without the
#: noise; 1 only (diffusers' SDE schedulers have no eta).
ETA_ANY = frozenset({"DPM++ 2S a", "DPM++ 2S a Karras", "DPM fast", "DPM adaptive", "DDIM"})
ETA_OFF = {"Euler a": "Euler", "DPM2 a": "DPM2", "DPM2 a Karras": "DPM2 Karras"}
ETA_ONE = frozenset({"DPM++ SDE", "DPM++ SDE Karras", "DPM++ 2M SDE", "DPM++ 2M SDE Karras"})


def check_eta(sampler: str, eta: float | None) -> None:
    """InvalidRequest naming ``eta`` when ``sampler`` cannot run with it."""
    if eta is None or sampler in ETA_ANY or (eta == 1 and sampler in ETA_ONE):
        return
    if sampler in ETA_OFF:
        if eta in (0, 1):
            return
        raise InvalidRequest(
            f"eta: {sampler} runs with eta 1, or 0 (which makes it {ETA_OFF[sampler]}); "
            f"DPM++ 2S a, DPM fast, DPM adaptive and DDIM take any eta",
            param="eta",
        )
    if sampler in ETA_ONE:
        raise InvalidRequest(
            f"eta: {sampler} runs with eta 1 here; DPM++ 2S a, DPM fast, DPM adaptive and DDIM "
            f"take any eta",
            param="eta",
        )


def sampler_run(request: GenerationRequest) -> str:
    """The sampler that runs ``request``: its own, or the one eta 0 makes of an ancestral one."""
    sampler = canonical_sampler(request.sampler)
    if request.eta == 0 and sampler in ETA_OFF:
        return ETA_OFF[sampler]
    return sampler


def partial_steps(count: int, total: int) -> list[int]:
    """The steps at which ``count`` partial images are kept in a task of ``total`` steps:
    spread evenly, none at the last (the image itself); fewer when there are fewer steps."""
    steps = {round(i * total / (count + 1)) for i in range(1, count + 1)}
    return sorted(step for step in steps if 1 <= step < total)


def hires_steps(request: GenerationRequest) -> int:
    """The steps the hires pass runs (an image-to-image pass runs ``strength`` of its steps)."""
    if request.hires is None:
        return 0
    steps = request.hires.steps or request.steps
    return min(int(steps * request.hires.strength), steps)


class GenerationRequest(BaseModel):
    """One text-to-image or image-to-image request, in huabu's own terms."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Name
    prompt: Prompt = ""
    negative_prompt: Prompt = ""
    width: int = 512
    height: int = 512
    steps: int = Field(default=20, ge=1)
    #: Classifier-free guidance (A1111's CFG scale): 1 runs without the negative prompt.
    guidance: float = Field(default=7.0, ge=0, le=30)
    #: A guidance-distilled family's guidance (FLUX.1's guidance embedding; Forge's
    #: "Distilled CFG Scale"): unset, the family's default; families without one refuse it.
    distilled_guidance: float | None = Field(default=None, ge=0, le=30)
    sampler: Name = "Euler a"
    #: A1111's eta: how much fresh noise an ancestral sampler adds each step (1, A1111's
    #: default; 0 makes Euler a Euler and DPM2 a DPM2), DDIM's η (0 by default). None: the
    #: sampler's default. Samplers without noise ignore it, as in A1111.
    eta: float | None = Field(default=None, ge=0, le=1)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    n_images: int = Field(default=1, ge=1)
    #: The img2img source.
    init_image: ImageRef | None = None
    strength: float = Field(default=0.75, gt=0, le=1)
    clip_skip: int = Field(default=1, ge=1, le=12)
    vae: Name | None = None
    loras: tuple[LoraRef, ...] = Field(default=(), max_length=MAX_LORAS)
    #: Textual-inversion embeddings from ``models/embeddings`` to make sure are loaded. As in
    #: A1111, an embedding applies where its name appears in the prompt or negative prompt
    #: (listed or not); listing one only checks that it exists.
    embeddings: tuple[Name, ...] = Field(default=(), max_length=MAX_EMBEDDINGS)
    #: Prompt styles from ``$HUABU_HOME/styles.csv`` (A1111's), applied in order when the
    #: request is accepted (``catalog.styles``): what is queued has them in its prompts.
    styles: tuple[Name, ...] = Field(default=(), max_length=MAX_STYLES)
    controlnets: tuple[ControlUnit, ...] = Field(default=(), max_length=MAX_CONTROLNETS)
    ip_adapter: IpAdapterRef | None = None
    inpaint: InpaintRef | None = None
    #: A1111's variation seeds: the starting noise is ``subseed``'s, slerped into the seed's
    #: by ``subseed_strength`` (0: the seed's image exactly; 1: the subseed's).
    subseed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(default=0.0, ge=0, le=1)
    #: Circular padding everywhere: an image that tiles.
    tiling: bool = False
    hires: HiresFix | None = None
    #: A1111's "SD upscale" script, on an image-to-image request.
    sd_upscale: SdUpscale | None = None
    refiner: Refiner | None = None
    #: Live previews to keep at steps spread evenly over the task's (OpenAI's streamed
    #: partial images): read from its events while it runs (``partial_steps``).
    partial_images: int = Field(default=0, ge=0, le=3)
    output_format: OutputFormat = "png"
    #: jpeg and webp: the encoder's quality, 0–100 (None: 92).
    output_quality: int | None = Field(default=None, ge=0, le=100)

    @classmethod
    def parse(
        cls,
        data: dict[str, Any],
        *,
        sent: set[str] | None = None,
        wire_names: dict[str, str] | None = None,
    ) -> GenerationRequest:
        """Build a request from plain data; errors become InvalidRequest naming the field.

        A dialect passes ``sent`` (the wire fields its caller sent) and ``wire_names`` (native
        field → wire field) for the fields whose value may be its own default: those its
        caller left out hold for the SD families as they are, while a family with defaults
        of its own (FLUX.1 …) takes its own instead (``catalog.families.fit``)."""
        try:
            request = cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_field(exc.errors()[0]) from None
        if sent is None or not wire_names:
            return request
        defaulted = {native for native, wire in wire_names.items() if wire not in sent}
        given = request.model_fields_set - defaulted
        return cls.model_construct(_fields_set=given, **dict(request))

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    def checked(self, settings: Settings) -> GenerationRequest:
        """Enforce the server's configured limits and canonicalise names.

        Returns the request with the sampler spelled canonically and the seed resolved
        (-1 becomes a concrete random seed, so a retried task reproduces the same images).
        """
        for name, value in (("width", self.width), ("height", self.height)):
            if value % 8:
                raise InvalidRequest(f"{name} must be a multiple of 8, got {value}", param=name)
            if not settings.min_size <= value <= settings.max_size:
                raise InvalidRequest(
                    f"{name} must be between {settings.min_size} and {settings.max_size}, "
                    f"got {value}",
                    param=name,
                )
        if self.width * self.height > settings.max_pixels:
            raise InvalidRequest(
                f"width × height must be at most {settings.max_pixels} pixels, "
                f"got {self.width}×{self.height}",
                param="width",
            )
        if self.steps > settings.max_steps:
            raise InvalidRequest(
                f"steps must be between 1 and {settings.max_steps}, got {self.steps}",
                param="steps",
            )
        if self.n_images > settings.max_images:
            raise InvalidRequest(
                f"n_images must be between 1 and {settings.max_images}, got {self.n_images}",
                param="n_images",
            )
        if self.inpaint is not None and self.init_image is None:
            raise InvalidRequest("inpaint needs an init_image to repaint", param="inpaint")
        if self.init_image is not None and int(self.steps * self.strength) < 1:
            raise InvalidRequest(
                f"steps × strength must be at least 1 (image-to-image runs that many steps), "
                f"got {self.steps} × {self.strength:g}; raise steps or strength",
                param="strength",
            )
        for index, unit in enumerate(self.controlnets):
            if unit.start >= unit.end:
                raise InvalidRequest(
                    f"controlnets.{index}: start ({unit.start:g}) must be below end ({unit.end:g})",
                    param=f"controlnets.{index}.start",
                )
        if self.hires is not None:
            self._check_hires(self.hires, settings)
        if self.sd_upscale is not None:
            if self.init_image is None:
                raise InvalidRequest("sd_upscale: it upscales an init_image", param="sd_upscale")
            for name in ("inpaint", "controlnets", "ip_adapter", "refiner"):
                if getattr(self, name):
                    raise InvalidRequest(
                        f"sd_upscale: it redraws tiles as plain image-to-image; {name} is not "
                        "taken with it",
                        param=name,
                    )
            if self.sd_upscale.upscaler in (*UNSUPPORTED_UPSCALERS, *LATENT_UPSCALERS):
                raise InvalidRequest(
                    f"sd_upscale.upscaler: {self.sd_upscale.upscaler} is not supported",
                    param="sd_upscale.upscaler",
                )
        if self.refiner is not None and self.refiner.model == self.model:
            raise InvalidRequest(
                "refiner.model: the refiner must be another checkpoint than model",
                param="refiner.model",
            )
        check_eta(canonical_sampler(self.sampler), self.eta)
        seed = self.seed if self.seed >= 0 else secrets.randbelow(MAX_SEED - settings.max_images)
        subseed = self.subseed
        if subseed < 0 and self.subseed_strength > 0:
            subseed = secrets.randbelow(MAX_SEED - settings.max_images)
        return self.model_copy(
            update={"sampler": canonical_sampler(self.sampler), "seed": seed, "subseed": subseed}
        )

    def _check_hires(self, hires: HiresFix, settings: Settings) -> None:
        hires.checked_upscaler()
        if self.init_image is not None:
            raise InvalidRequest("hires: the hires fix is for text-to-image", param="hires")
        if hires.strength > 0 and hires_steps(self) < 1:
            raise InvalidRequest(
                f"hires: steps × strength must be at least 1 (the second pass runs that many "
                f"steps), got {hires.steps or self.steps} × {hires.strength:g}; raise "
                "hires.steps or hires.strength",
                param="hires.strength",
            )
        if hires.steps > settings.max_steps:
            raise InvalidRequest(
                f"hires.steps must be at most {settings.max_steps}, got {hires.steps}",
                param="hires.steps",
            )
        (up_w, up_h), (width, height) = hires.sizes(self.width, self.height)
        param = (
            "hires.scale"
            if not (hires.resize_width or hires.resize_height)
            else ("hires.resize_width")
        )
        largest = max(up_w, up_h)
        if largest > settings.max_size or up_w * up_h > settings.max_pixels:
            raise InvalidRequest(
                f"the hires fix would make {up_w}x{up_h}; the limit is {settings.max_size} a "
                f"side and {settings.max_pixels} pixels",
                param=param,
            )
        if min(width, height) < settings.min_size:
            raise InvalidRequest(
                f"the hires fix would make {width}x{height}; the smallest side is "
                f"{settings.min_size}",
                param=param,
            )

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images made (the hires fix's, with one)."""
        if self.hires is None:
            return self.width, self.height
        return self.hires.sizes(self.width, self.height)[1]

    def image_refs(self) -> dict[str, ImageRef]:
        """Every input image the request names, by its field (``controlnets.0.image`` …)."""
        refs = {}
        if self.init_image is not None:
            refs["init_image"] = self.init_image
        if self.inpaint is not None:
            refs["inpaint.mask"] = self.inpaint.mask
        for index, unit in enumerate(self.controlnets):
            refs[f"controlnets.{index}.image"] = unit.image
        if self.ip_adapter is not None:
            refs["ip_adapter.image"] = self.ip_adapter.image
        return refs

    def with_images(self, refs: dict[str, ImageRef]) -> GenerationRequest:
        """The request with the input images of ``image_refs()`` replaced by ``refs``."""
        update: dict[str, Any] = {}
        if "init_image" in refs:
            update["init_image"] = refs["init_image"]
        if self.inpaint is not None and "inpaint.mask" in refs:
            update["inpaint"] = self.inpaint.model_copy(update={"mask": refs["inpaint.mask"]})
        if self.controlnets:
            update["controlnets"] = tuple(
                unit.model_copy(update={"image": refs.get(f"controlnets.{i}.image", unit.image)})
                for i, unit in enumerate(self.controlnets)
            )
        if self.ip_adapter is not None and "ip_adapter.image" in refs:
            update["ip_adapter"] = self.ip_adapter.model_copy(
                update={"image": refs["ip_adapter.image"]}
            )
        return self.model_copy(update=update)

    def batch_key(self) -> str | None:
        """Requests with equal keys can share one denoising loop (``worker.batcher``): same
        checkpoint, VAE, size, steps, sampler, LoRAs at the same weights and tiling, and
        classifier-free guidance on or off for all; prompts, seeds, guidance, clip skip,
        embeddings, image counts and output formats may differ, and so may image-to-image
        sources (at the same strength). None: this request runs alone: inpainting, ControlNet,
        IP-Adapter, hires fix, refiner, variation seeds and prompts that edit, alternate or
        compose (AND) each have per-request inputs the shared loop does not take yet, and DPM
        adaptive chooses its steps by the error of the whole batch."""
        if (
            self.inpaint is not None
            or self.controlnets
            or self.ip_adapter is not None
            or self.hires is not None
            or self.refiner is not None
            or self.subseed_strength > 0
            or is_scheduled(self.prompt)
            or is_scheduled(self.negative_prompt)
            or is_composed(self.prompt)
            or self.partial_images
            or self.sd_upscale is not None
        ):
            return None
        try:
            sampler = canonical_sampler(self.sampler)
        except InvalidRequest:
            return None
        if sampler == "DPM adaptive":
            return None
        shared = [
            self.model,
            self.vae,
            self.width,
            self.height,
            self.steps,
            sampler,
            [(lora.name, lora.weight) for lora in self.loras],
            self.tiling,
            self.eta,
            self.guidance > 1,
            self.strength if self.init_image is not None else None,
        ]
        return hashlib.sha256(json.dumps(shared).encode()).hexdigest()

    def image_seeds(self) -> list[int]:
        """The seed of each image, A1111's convention: image i uses seed + i."""
        return [self.seed + i for i in range(self.n_images)]

    def image_subseeds(self) -> list[int]:
        """The variation seed of each image: subseed + i, as A1111 numbers them."""
        return [self.subseed + i for i in range(self.n_images)]


@dataclass(frozen=True)
class Timings:
    """Where the time of one generation went, in seconds."""

    load: float
    prompt: float
    sample: float
    decode: float
    total: float


@dataclass
class GenerationResult:
    """What the engine made: images in order, with the seeds and parameters actually used."""

    request: GenerationRequest
    images: list[Image]
    seeds: list[int]
    timings: Timings
    infotexts: list[str] = field(default_factory=list)
