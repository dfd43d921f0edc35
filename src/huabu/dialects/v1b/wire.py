"""The wire shapes of remagi/miaohua's v1b API (specs 000, 001): its requests and answers as the
API defines them, and its error body."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import HuabuError, InvalidRequest
from huabu.native import MAX_OFFSET, MAX_SEED
from huabu.native.generation import Text
from huabu.native.training import RowId

ORIGIN = "v1b"


PREFIX = "/api/v1b"


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    email: str
    password: str


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    token: str = ""
    model_name: str = Field(min_length=1)
    prompt: str = Field(default="", max_length=16_000)
    neg_prompt: str = Field(default="", max_length=16_000)
    n_images: int = Field(default=2, ge=1)
    scale: float = Field(default=7, ge=1, le=20)
    select_seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    output_size: str = "512x512"
    init_img: str = ""


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    task_id: str = Field(min_length=1)


class ErrorOut(BaseModel):
    code: int = Field(description="The HTTP status.")
    msg: str
    error_msg: str
    param: str | None = Field(default=None, description="The field at fault (bad input only).")


class TokenOut(BaseModel):
    token: str


class SubmitOut(BaseModel):
    task_id: str


class ImageOut(BaseModel):
    large: str
    middle: str
    save_index: int
    share: bool
    shareable: bool


class ResultOut(BaseModel):
    state: Literal["pending", "done", "failed"]
    images: list[ImageOut]
    error_msg: str
    wait_time: int = Field(description="Tasks ahead of this one.")
    select_seed: int
    fav: bool


class FormOut(BaseModel):
    code: int
    info: list[dict[str, Any]]
    msg: str


def render_error(error: HuabuError, status: int) -> Response:
    body: dict[str, Any] = {"code": status, "msg": error.message, "error_msg": error.message}
    if isinstance(error, InvalidRequest):
        body["param"] = error.param
    return JSONResponse(body, status_code=status)


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    name: Text = Field(min_length=1, max_length=200)
    description: Text = Field(default="", max_length=4000)
    images: list[str] = Field(min_length=1)


class DatasetAllIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    page: int = Field(default=1, ge=1, le=MAX_OFFSET)
    per_page: int = Field(default=20, ge=1, le=100)


class TrainSubmitIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=4000)
    base_model: str = ""
    trigger_word: str = Field(default="", max_length=200)
    main_body: str = "Style"
    nsfw: int = Field(default=0, ge=0, le=1)
    dataset: list[RowId] = Field(min_length=1, max_length=50)
    steps: int | None = Field(default=None, ge=1)
    rank: int | None = Field(default=None, ge=1, le=128)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    resolution: int | None = Field(default=None, ge=64, le=2048)
    seed: int = -1


class TrainProgressIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    token: str = ""
    task_id: str = Field(min_length=1)


class UploadImgsIn(BaseModel):
    init_img: list[bytes] = Field(description="The image files (one part each).")
    token: str = ""


class Ok(BaseModel):
    code: int = Field(description="0")
    msg: str


class UrlsOk(Ok):
    info: list[str] = Field(description="The images' links, in the order sent.")


class DatasetId(BaseModel):
    dataset_id: int


class DatasetOk(Ok):
    info: DatasetId


class DatasetOut(BaseModel):
    id: int
    name: str
    description: str
    demo_picture: str
    create_time: str
    update_time: str
    images: list[str]
    images_num: int


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    page: int
    per_page: int
    has_next: bool
    has_prev: bool
    totalPages: int  # noqa: N815 - wire name


class TaskId(BaseModel):
    task_id: str


class TrainOk(Ok):
    info: TaskId


class ProgressOut(BaseModel):
    create_time: str
    description: str
    main_body: str
    model_name: str
    state: str = Field(description="pending, running, done, failed or cancelled")
    training_progress: float
    trigger_word: str
    base_model: str
    error_msg: str


class TrainForm(BaseModel):
    base_model: list[str]
    main_body: list[str]


class TrainFormOk(Ok):
    info: TrainForm


def success(info: Any) -> JSONResponse:
    """The envelope of every successful v1b training answer."""
    return JSONResponse({"code": 0, "info": info, "msg": ""})
