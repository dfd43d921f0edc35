"""The wire shapes of OpenAI's images API: its requests and answers as the API defines them, and
its error body."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import AuthFailed, HuabuError, InvalidRequest, Overloaded

ORIGIN = "openai"


PREFIX = "/v1"


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, requests or server_error")
    param: str | None
    code: str | None


class ErrorOut(BaseModel):
    error: ErrorDetail


def render_error(error: HuabuError, status: int) -> Response:
    kind, code = "invalid_request_error", None
    if isinstance(error, AuthFailed):
        code = "invalid_api_key"
    elif isinstance(error, Overloaded):
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    param = error.param if isinstance(error, InvalidRequest) else None
    message = error.message
    if error.task_id is not None and error.task_id not in message:
        message = f"{message} (task {error.task_id})"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class GenerationIn(BaseModel):
    """The fields of today's openai SDK (``images.generate``); one it does not know is refused
    by name, as OpenAI refuses an unknown parameter."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    #: jpeg and webp: 100 (the default) the least compressed.
    output_compression: int | None = Field(default=None, ge=0, le=100)
    quality: Literal["auto", "standard", "hd", "low", "medium", "high", "xhigh", "max"] = "auto"
    background: Literal["transparent", "opaque", "auto"] | None = None
    #: DALL·E 3's; accepted, the model draws as it draws.
    style: Literal["vivid", "natural"] | None = None
    #: Accepted: huabu filters nothing, at either level.
    moderation: Literal["auto", "low"] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    stream: bool = False
    partial_images: int | None = Field(default=None, ge=0, le=3)
    # Known to the SDK, for models huabu does not serve: refused by name when sent.
    complexity: Any = None
    frame_count: Any = None
    frame_duration_ms: Any = None
    svg: Any = None

    @property
    def gpt_image_style(self) -> bool:
        """Whether the request is GPT-image-shaped (its fields, or its model's name): OpenAI
        answers those with ``b64_json`` unless told otherwise."""
        fields = {"output_format", "output_compression", "background", "stream", "partial_images"}
        return bool(fields & self.model_fields_set) or (self.model or "").startswith("gpt-image")


class EditIn(GenerationIn):
    prompt: str = Field(default="", max_length=32_000)
    #: GPT-image's: how closely to keep the input's details; accepted (huabu's image-to-image
    #: strength applies).
    input_fidelity: Literal["high", "low"] | None = None
    markup: Any = None


class EditForm(EditIn):
    """The multipart body of edits and variations (documentation; read by ``_form``)."""

    image: bytes = Field(description="The image to change (`image[]` is accepted too)")
    mask: bytes | None = Field(default=None, description="Edits: transparent pixels = change")


class ImageOut(BaseModel):
    url: str | None = None
    b64_json: str | None = None


class ImagesOut(BaseModel):
    created: int
    data: list[ImageOut]
    output_format: str
    size: str
    quality: str


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelsOut(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]
