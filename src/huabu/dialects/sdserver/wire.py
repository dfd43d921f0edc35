"""The wire shapes of the plain SD API server (spec 004): its requests and answers as the API
defines them, and its error body."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import Cancelled, HuabuError, InvalidRequest, TaskFailed, TaskTimedOut
from huabu.native import MAX_SEED

ORIGIN = "sdserver"


PATHS = ("/txt2img", "/img2img")


class Txt2ImgForm(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str = Field(default="", max_length=16_000)
    negative_prompt: str = Field(default="", max_length=16_000)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    num_outputs: int = Field(default=1, ge=1, le=4)
    width: int = Field(default=512, gt=0, le=1024)
    height: int = Field(default=512, gt=0, le=1024)
    num_inference_steps: int = Field(default=30, gt=0, le=150)
    guidance_scale: float = Field(default=7.0, gt=0, le=20)


class Img2ImgForm(Txt2ImgForm):
    init_image: str
    strength: float = Field(default=0.7, gt=0, lt=1)
    #: Unlike txt2img, the size defaults to the source image's (rounded down to a multiple of 8).
    width: int | None = Field(default=None, gt=0, le=1024)  # type: ignore[assignment]
    height: int | None = Field(default=None, gt=0, le=1024)  # type: ignore[assignment]


class ImageOut(BaseModel):
    image_url: str
    mime_type: str
    seed: int


class ImagesOut(BaseModel):
    images: list[ImageOut]
    status: str = "success"


class ErrorOut(BaseModel):
    status: Literal["error", "failed", "timeout"]
    message: str
    param: str | None = Field(default=None, description="The field at fault (bad input only).")
    task_id: str | None = Field(default=None, description="The task, once one was queued.")


def render_error(error: HuabuError, status: int) -> Response:
    kind = "error"
    if isinstance(error, TaskFailed | Cancelled):
        kind = "failed"
    elif isinstance(error, TaskTimedOut):
        kind = "timeout"
    body: dict[str, object] = {"status": kind, "message": error.message}
    if isinstance(error, InvalidRequest):
        body["param"] = error.param
    if error.task_id is not None:
        body["task_id"] = error.task_id
    return JSONResponse(body, status_code=status)
