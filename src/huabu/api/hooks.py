"""The native API's webhook routes: your signing secret, and a task's deliveries (see
``tasks.webhooks``)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from huabu.tasks import webhooks
from huabu.web.deps import CurrentUser, ServicesDep
from huabu.web.routing import GuardedRoute

PREFIX = "/huabu/v1"
router = APIRouter(route_class=GuardedRoute, prefix=PREFIX, tags=["native: webhooks"])


class SecretOut(BaseModel):
    secret: str = Field(
        description="whsec_<base64 key>: verify webhook-signature with it. "
        "Shown this once; the one it replaces stops signing now."
    )


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header of every try")
    event: str = Field(description="task.succeeded, task.failed or task.cancelled")
    url: str
    state: str = Field(description="pending, delivered or failed (every try used)")
    attempts: int
    last_status: int | None = Field(description="The receiver's HTTP status at the last try")
    last_error: str | None = Field(description="Why the last try failed (status, timeout, …)")
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


@router.post(
    "/me/webhook-secret",
    response_model=SecretOut,
    status_code=201,
    summary="Create or rotate your webhook signing secret",
)
def rotate_secret(user: CurrentUser, services: ServicesDep) -> SecretOut:
    secret = webhooks.rotate_secret(services.sessions, user.id)
    return SecretOut(secret=secret)


@router.get(
    "/tasks/{task_id}/deliveries",
    response_model=list[DeliveryOut],
    summary="A task's webhook deliveries and their tries",
)
def deliveries(task_id: str, user: CurrentUser, services: ServicesDep) -> list[DeliveryOut]:
    return [DeliveryOut(**vars(record)) for record in services.deliveries.of_task(user.id, task_id)]
