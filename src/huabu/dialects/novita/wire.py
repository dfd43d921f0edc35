"""The wire shapes of novita's v3 API (spec 003): its requests and answers as the API defines them,
and its error body."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import AuthFailed, HuabuError, InvalidRequest, NotFound, Overloaded, TooLarge
from huabu.native import MAX_CONTROLNETS, MAX_LORAS, MAX_SEED

ORIGIN = "novita"


PREFIX = "/v3"


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = Field(min_length=1)
    strength: float = Field(default=1.0, ge=-4, le=4)


class NamedIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = ""


class ControlUnitIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = Field(min_length=1)
    image_base64: str = Field(min_length=1)
    strength: float = Field(default=1.0, ge=0, le=2)
    preprocessor: str = "canny"
    guidance_start: float = Field(default=0.0, ge=0, le=1)
    guidance_end: float = Field(default=1.0, ge=0, le=1)


class ControlNetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    units: list[ControlUnitIn] = Field(default_factory=list, max_length=MAX_CONTROLNETS)


class Txt2ImgIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model_name: str = Field(min_length=1)
    prompt: str = Field(min_length=1, max_length=1024)
    negative_prompt: str | None = Field(default=None, max_length=1024)
    width: int = Field(default=512, ge=128, le=2048)
    height: int = Field(default=512, ge=128, le=2048)
    image_num: int = Field(default=1, ge=1, le=8)
    steps: int = Field(default=20, ge=1, le=100)
    guidance_scale: float = Field(default=7.5, ge=1, le=30)
    sampler_name: str = "Euler a"
    seed: int | None = Field(default=-1, ge=-1, le=MAX_SEED)
    sd_vae: str | None = None
    clip_skip: int | None = Field(default=None, ge=1, le=12)
    loras: list[LoraIn] | None = Field(default=None, max_length=MAX_LORAS)
    embeddings: list[NamedIn] | None = Field(default=None, max_length=5)
    hires_fix: HiresFixIn | None = None
    refiner: RefinerIn | None = None
    controlnet: ControlNetIn | None = None
    ip_adapters: list[IpAdapterIn] | None = Field(default=None, max_length=1)


class RefinerIn(BaseModel):
    """novita's ``refiner``: where the SDXL refiner takes over, as a fraction of the steps."""

    model_config = ConfigDict(extra="ignore")
    switch_at: float = Field(default=0.8, ge=0, le=1)


class HiresFixIn(BaseModel):
    """novita's ``hires_fix``: the final size, the second pass's strength, the upscaler."""

    model_config = ConfigDict(extra="ignore")
    target_width: int = Field(ge=128, le=4096)
    target_height: int = Field(ge=128, le=4096)
    strength: float = Field(default=0.5, gt=0, le=1)
    upscaler: str = "Latent"


class IpAdapterIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model_name: str = Field(min_length=1)
    image_base64: str = Field(min_length=1)
    strength: float = Field(default=0.5, ge=0, le=2)


class Img2ImgIn(Txt2ImgIn):
    image_base64: str = Field(min_length=1)
    strength: float = Field(default=0.75, gt=0, le=1)


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, max_length=2048)


class ExtraIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    response_image_type: Literal["png", "webp", "jpeg"] = "png"
    #: Where the task's end is announced (signed as huabu's native webhooks are).
    webhook: WebhookIn | None = None


class Envelope(BaseModel):
    model_config = ConfigDict(extra="ignore")
    extra: ExtraIn | None = None
    request: dict[str, Any]


class SubmitOut(BaseModel):
    task_id: str


class TaskOut(BaseModel):
    task_id: str
    status: Literal[
        "TASK_STATUS_QUEUED",
        "TASK_STATUS_PROCESSING",
        "TASK_STATUS_SUCCEED",
        "TASK_STATUS_FAILED",
    ]
    reason: str
    task_type: Literal["TXT_TO_IMG", "IMG_TO_IMG"]
    eta: int
    progress_percent: int


class ImageOut(BaseModel):
    image_url: str
    image_type: str
    image_url_ttl: int
    nsfw_detection_result: None


class DebugInfo(BaseModel):
    request_info: str
    submit_time_ms: int
    execute_time_ms: int
    complete_time_ms: int


class ResultExtra(BaseModel):
    seed: int
    enable_nsfw_detection: bool
    debug_info: DebugInfo


class TaskResultOut(BaseModel):
    task: TaskOut
    images: list[ImageOut]
    videos: list[Any]
    extra: ResultExtra


class ModelType(BaseModel):
    name: str
    display_name: str


class ModelOut(BaseModel):
    id: int
    name: str
    sd_name: str
    sd_name_in_api: str
    type: ModelType
    status: int
    base_model: str
    source: str
    visibility: str
    is_nsfw: bool
    categories: list[str]
    download_url: str
    download_url_ttl: int
    cover_url: str
    hash_sha256: str


class Pagination(BaseModel):
    next_cursor: str


class ModelsOut(BaseModel):
    models: list[ModelOut]
    pagination: Pagination


_REASONS = (
    (TooLarge, "REQUEST_TOO_LARGE"),
    (InvalidRequest, "INVALID_REQUEST_BODY"),
    (AuthFailed, "INVALID_API_KEY"),
    (NotFound, "NOT_FOUND"),
    (Overloaded, "RATE_LIMIT_EXCEEDED"),
)


class ErrorOut(BaseModel):
    code: int = Field(description="The HTTP status.")
    reason: str = Field(description="INVALID_REQUEST_BODY, INVALID_API_KEY, NOT_FOUND, …")
    message: str
    metadata: dict[str, str | None] = Field(description="`param`: the field at fault.")


def render_error(error: HuabuError, status: int) -> Response:
    reason = next((name for kind, name in _REASONS if isinstance(error, kind)), "INTERNAL_ERROR")
    metadata = {"param": error.param} if isinstance(error, InvalidRequest) else {}
    return JSONResponse(
        {"code": status, "reason": reason, "message": error.message, "metadata": metadata},
        status_code=status,
    )
