"""The native API's training routes: make a dataset of your uploads, train a LoRA on it (a
task like any other: watched, cancelled and deleted through ``/tasks``), and list and delete
your datasets and trained models."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from huabu.api.routes import TaskOut, task_response
from huabu.native.generation import Text
from huabu.native.training import TrainingRequest
from huabu.web.deps import BaseUrl, CurrentUser, FileUrl, ServicesDep
from huabu.web.error_renderers import NativeError
from huabu.web.routing import GuardedRoute

PREFIX = "/huabu/v1"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["native: training data"])
_NOT_YOURS: dict[int | str, dict[str, Any]] = {
    404: {"model": NativeError, "description": "No such one of yours"}
}


class DatasetOut(BaseModel):
    id: int
    name: str
    description: str
    images: list[str]
    created_at: datetime


class DatasetPage(BaseModel):
    data: list[DatasetOut]
    total: int


class DatasetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=200)
    description: Text = Field(default="", max_length=4000)
    images: list[uuid.UUID] = Field(min_length=1, description="Your uploads' ids.")


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    summary="Make a dataset of your uploads",
)
def create_dataset(
    body: DatasetIn, user: CurrentUser, services: ServicesDep, url: FileUrl
) -> DatasetOut:
    r = services.training.create_dataset(user.id, body.name, body.description, body.images)
    return DatasetOut(
        id=r.id,
        name=r.name,
        description=r.description,
        images=[url(key) for key in r.images],
        created_at=r.created_at,
    )


@router.post(
    "/trainings",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=TaskOut,
    summary="Train a LoRA on your datasets",
)
def submit_training(
    body: TrainingRequest, user: CurrentUser, services: ServicesDep, base: BaseUrl
) -> Response:
    """Queued like a generation; once it succeeds, use it by its name as a LoRA
    (``"loras": [{"name": …}]``) and its trigger word in the prompt. Unset numbers take the
    server's defaults (``HUABU_TRAIN_*``); the base model defaults to the server's first."""
    record = services.training.submit(user, body, origin="native")
    return task_response(record, services, base, status.HTTP_202_ACCEPTED)


@router.get("/datasets", response_model=DatasetPage, summary="Your datasets, oldest first")
def list_datasets(
    user: CurrentUser,
    services: ServicesDep,
    url: FileUrl,
    page: Annotated[int, Query(ge=1, le=10**6)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DatasetPage:
    records, total = services.training.datasets(user.id, page=page, per_page=per_page)
    return DatasetPage(
        data=[
            DatasetOut(
                id=r.id,
                name=r.name,
                description=r.description,
                images=[url(key) for key in r.images],
                created_at=r.created_at,
            )
            for r in records
        ],
        total=total,
    )


@router.delete(
    "/datasets/{dataset_id}", status_code=204, summary="Delete a dataset", responses=_NOT_YOURS
)
def delete_dataset(
    dataset_id: Annotated[int, Path(ge=1, le=2**31 - 1)], user: CurrentUser, services: ServicesDep
) -> Response:
    """Its uploads are deleted a day after they were uploaded, unless a task (a queued
    training) or another dataset uses them."""
    services.training.delete_dataset(user.id, dataset_id)
    return Response(status_code=204)


@router.get(
    "/trained-models",
    response_model=list[str],
    summary="Your trained models (their training succeeded), by name",
)
def list_trained(user: CurrentUser, services: ServicesDep) -> list[str]:
    return services.training.trained_names(user.id)


@router.delete(
    "/trained-models/{name}",
    status_code=204,
    summary="Delete a trained model",
    responses=_NOT_YOURS,
)
def delete_trained(name: str, user: CurrentUser, services: ServicesDep) -> Response:
    """Unusable at once and its name free again; an unfinished training is cancelled; its
    published files leave the store."""
    services.training.delete_trained(user.id, name)
    return Response(status_code=204)
