"""The wire shapes of AUTOMATIC1111's sdapi/v1 (and sd-webui-controlnet's listings): its requests
and answers as the API defines them, and its error body."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import HuabuError, InvalidRequest
from huabu.native import (
    MAX_SEED,
)


class ControlNetArg(BaseModel):
    """One sd-webui-controlnet unit (``alwayson_scripts.controlnet.args[i]``)."""

    model_config = ConfigDict(extra="ignore")
    enabled: bool = True
    image: str | dict[str, Any] | None = None
    input_image: str | None = None
    module: str = "none"
    model: str = "None"
    weight: float = Field(default=1.0, ge=0, le=2)
    guidance_start: float = Field(default=0.0, ge=0, le=1)
    guidance_end: float = Field(default=1.0, ge=0, le=1)

    def image_data(self) -> str | None:
        image = self.image
        if isinstance(image, dict):  # {"image": b64, "mask": b64}
            image = image.get("image")
        return image or self.input_image or None


class Txt2ImgIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(default="", max_length=16_000)
    negative_prompt: str = Field(default="", max_length=16_000)
    styles: list[str] = []
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(default=0.0, ge=0, le=1)
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(default=1, ge=1)
    n_iter: int = Field(default=1, ge=1)
    steps: int = Field(default=20, ge=1)
    cfg_scale: float = Field(default=7.0, ge=0, le=30)
    #: Forge's guidance of guidance-distilled models (FLUX.1); unset: the model's default.
    distilled_cfg_scale: float | None = Field(default=None, ge=0, le=30)
    width: int = 512
    height: int = 512
    enable_hr: bool = False
    #: The hires fix (txt2img only, as in A1111): its second pass's strength.
    denoising_strength: float = Field(default=0.75, ge=0, le=1)
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    #: SDXL's refiner: a checkpoint title ("", "None": none), and where it takes over.
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = Field(default=None, ge=0, le=1)
    tiling: bool = False
    restore_faces: bool | None = None
    override_settings: dict[str, Any] = {}
    alwayson_scripts: dict[str, Any] = {}
    send_images: bool = True
    # The rest of A1111's fields, at A1111's defaults: each is honoured, has no effect here as
    # in A1111 (saving to the server's disk: huabu keeps every task's images), or is refused
    # by name when it asks for what huabu does not do (``translate.check_fields``).
    eta: float | None = Field(default=None, ge=0, le=1)
    s_churn: float = 0.0
    s_tmax: float | None = None
    s_tmin: float = 0.0
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scheduler: str | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    save_images: bool = False
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False
    script_name: str | None = None
    script_args: list[Any] = []
    comments: dict[str, Any] | None = None
    firstpass_image: str | None = None
    force_task_id: str | None = None
    infotext: str | None = None


class Img2ImgIn(Txt2ImgIn):
    init_images: list[str] = Field(min_length=1)
    #: Inpainting: white repaints. The defaults are A1111's API defaults.
    mask: str | None = None
    mask_blur: int = Field(default=4, ge=0, le=64)
    inpainting_fill: int = Field(default=0, ge=0, le=3)  # fill, original, latent noise/nothing
    inpaint_full_res: bool = True  # "only masked"
    inpaint_full_res_padding: int = Field(default=0, ge=0, le=256)
    inpainting_mask_invert: int = Field(default=0, ge=0, le=1)
    resize_mode: int = Field(default=0, ge=0, le=3)
    #: instruct-pix2pix's image guidance: A1111 reads it on such models only (huabu has none).
    image_cfg_scale: float | None = None
    mask_blur_x: int | None = None
    mask_blur_y: int | None = None
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False

    def inpaint(self, mask_id: uuid.UUID) -> dict[str, Any]:
        """The native ``inpaint`` of this body, its mask being the upload ``mask_id``."""
        if self.inpainting_fill > 1:
            raise InvalidRequest(
                "inpainting_fill: 0 (fill) and 1 (original) are supported; latent noise (2) and "
                "latent nothing (3) are not yet",
                param="inpainting_fill",
            )
        blur = self.mask_blur
        if "mask_blur" not in self.model_fields_set and self.mask_blur_x is not None:
            blur = self.mask_blur_x  # A1111's two blurs, equal (translate.check_fields)
        return {
            "mask": mask_id,
            "blur": blur,
            "invert": bool(self.inpainting_mask_invert),
            "fill": "fill" if self.inpainting_fill == 0 else "original",
            "only_masked": self.inpaint_full_res,
            "padding": self.inpaint_full_res_padding,
        }


ORIGIN = "a1111"


PREFIX = "/sdapi/v1"


#: sd-webui-controlnet's listing routes, which A1111 clients read before sending units.
CONTROLNET_PREFIX = "/controlnet"


class ErrorOut(BaseModel):
    error: str = Field(description="InvalidRequest, AuthFailed, NotFound, TaskFailed, …")
    detail: str
    body: str
    errors: str
    param: str | None = Field(default=None, description="The field at fault (bad input only).")
    task_id: str | None = Field(default=None, description="The task, once one was queued.")


class ImagesOut(BaseModel):
    images: list[str] = Field(description="PNG/JPEG/WebP images, base64")
    parameters: dict[str, Any] = Field(description="The request as understood")
    info: str = Field(description="JSON: seeds, infotexts, sampler, …")


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressOut(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None
    textinfo: str | None


class PngInfoIn(BaseModel):
    image: str = Field(description="The image, base64 (a data: URL prefix is allowed)")


class PngInfoOut(BaseModel):
    info: str
    items: dict[str, str]
    parameters: dict[str, Any]


class OptionsIn(BaseModel):
    sd_model_checkpoint: str | None = None
    sd_vae: str | None = None
    CLIP_stop_at_last_layers: int | None = None


def render_error(error: HuabuError, status: int) -> Response:
    """A1111's HTTP error body (``error``, ``detail``, ``body``, ``errors``), plus ``param``
    and, for a task that was queued, ``task_id``."""
    body: dict[str, Any] = {
        # A1111 names the exception; a plain HTTP error (405, 500) is FastAPI's HTTPException.
        "error": "HTTPException" if type(error) is HuabuError else type(error).__name__,
        "detail": error.message,
        "body": "",
        "errors": error.message,
    }
    if isinstance(error, InvalidRequest):
        body["param"] = error.param
    if error.task_id is not None:
        body["task_id"] = error.task_id
    return JSONResponse(body, status_code=status)


class ControlNetModelsOut(BaseModel):
    model_list: list[str] = Field(description='"None", then the ControlNets the fleet serves')


class ControlNetModulesOut(BaseModel):
    module_list: list[str] = Field(description="The preprocessors that run here")
    module_detail: dict[str, dict[str, Any]]
