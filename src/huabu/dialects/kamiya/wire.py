"""The wire shapes of kamiya's image API (spec 002): its requests and answers as the API defines
them, and its error body."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import HuabuError
from huabu.native import MAX_SEED

ORIGIN = "kamiya"


PREFIX = "/api/image"


class LoRA(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    weight: float = Field(ge=0, le=100)


class GenerateIn(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["text2image", "image2image"] = "text2image"
    prompts: str = Field(default="", max_length=16_000)
    negativePrompts: str = Field(default="", max_length=16_000)  # noqa: N815 - wire name
    step: int = Field(default=28, ge=1)
    cfg: float = Field(default=7, ge=0, le=30)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)
    sampling: str = "DPM++ 2M Karras"
    width: int = 512
    height: int = 512
    model: str | None = None
    LoRAs: list[LoRA] = Field(default_factory=list)  # noqa: N815
    image: str | None = None


def envelope(data: Any, status: int = 200, message: str = "OK") -> JSONResponse:
    return JSONResponse({"status": status, "message": message, "data": data}, status_code=status)


class ErrorOut(BaseModel):
    status: int = Field(description="The HTTP status.")
    message: str
    data: None = None


class LoRAOut(BaseModel):
    id: str
    weight: float


class MetadataOut(BaseModel):
    LoRAs: list[LoRAOut]  # noqa: N815 - wire name
    model: str
    width: int
    height: int
    type: Literal["text2image", "image2image"]
    prompts: str
    negativePrompts: str  # noqa: N815
    sampling: str
    step: int
    cfg: float
    seed: int
    batch: int
    artboard: str
    jpg: str | None = Field(default=None, description="The image; empty if it failed.")


class TaskOut(BaseModel):
    id: str
    hashid: str
    metaid: str
    status: Literal["created", "generating", "generated", "failed"]
    metadata: MetadataOut
    userId: str  # noqa: N815
    createdAt: str  # noqa: N815
    updatedAt: str  # noqa: N815
    error: str | None = None


class TaskEnvelope(BaseModel):
    status: int
    message: str
    data: TaskOut


class TasksEnvelope(BaseModel):
    status: int
    message: str
    data: list[TaskOut]


class Named(BaseModel):
    id: str
    name: str


class ConfigOut(BaseModel):
    models: list[Named]
    LoRAs: list[Named]  # noqa: N815
    samplings: list[str]
    artboards: list[str]
    limits: dict[str, dict[str, int]]


class ConfigEnvelope(BaseModel):
    status: int
    message: str
    data: ConfigOut


def render_error(error: HuabuError, status: int) -> Response:
    return envelope(None, status, error.message)
