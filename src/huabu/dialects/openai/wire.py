"""The wire shapes of OpenAI's images API: its requests and answers as the API defines them, and
its error body."""

from __future__ import annotations

from typing import Literal

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
    model_config = ConfigDict(extra="ignore")
    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = None
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] = "auto"
    style: str | None = None
    stream: bool = False


class EditIn(GenerationIn):
    prompt: str = Field(default="", max_length=32_000)


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
