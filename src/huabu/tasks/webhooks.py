"""Webhooks per task, following the Standard Webhooks specification (standardwebhooks.com).

A task submitted with a webhook URL announces its end there: ``task.succeeded``,
``task.failed`` or ``task.cancelled``. A database trigger (migration 0013) queues the
delivery — its ``webhook_deliveries`` row and a procrastinate job on the ``huabu-service``
queue — in the transaction that finishes the task, whichever code path that is (a worker, a
cancel, the reaper of a dead worker), so no end goes unannounced and none twice.

Every ``huabu serve`` process runs those jobs (``tasks.service_jobs``). A delivery POSTs
``{"type", "timestamp", "data": <the task as GET /huabu/v1/tasks/{id} returns it>}`` with the
headers ``webhook-id`` (the same for every try of one delivery), ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, keyed with the owner's
secret (``whsec_<base64 key>``). A 2xx answer delivers it; anything else, a timeout
(HUABU_WEBHOOK_TIMEOUT) or a refused address is retried after HUABU_WEBHOOK_BACKOFF_SECONDS,
doubling, until HUABU_WEBHOOK_ATTEMPTS tries are used. Only the status code is kept, never
the receiver's answer, and only the task's owner can list the deliveries.

The URL passes the SSRF guard at submit and again at every try (its name may resolve
elsewhere by then), and the connection goes to the address that was checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from huabu import fetch
from huabu.db.tables import Task, User, WebhookDelivery
from huabu.errors import InvalidRequest, NotFound
from huabu.settings import Settings
from huabu.tasks.reads import TaskReads, parse_id
from huabu.tasks.records import TaskRecord

log = logging.getLogger("huabu.webhooks")

QUEUE = "huabu-service"
TASK_NAME = "huabu.deliver_webhook"
_REDEFER = text(
    "SELECT procrastinate_defer_jobs_v1(ARRAY[ROW(:queue, :task_name, 0, NULL, NULL, "
    "CAST(:args AS jsonb), :at)::procrastinate_job_to_defer_v1])"
)
#: A delivery being sent is leased for this long: a server that dies mid-try leaves it to the
#: job's retry, not to a second sender at once.
_LEASE = timedelta(minutes=5)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def message_id(delivery_id: uuid.UUID) -> str:
    return f"msg_{delivery_id.hex}"


def ensure_secret(session: Session, owner_id: uuid.UUID) -> None:
    """Give the user a signing secret if they have none yet (they see one by rotating)."""
    user = session.get_one(User, owner_id)
    if user.webhook_secret is None:
        user.webhook_secret = new_secret()


def rotate_secret(sessions: sessionmaker[Session], owner_id: uuid.UUID) -> str:
    """A new signing secret for the user, replacing the old one; the only time it is shown."""
    secret = new_secret()
    with sessions.begin() as session:
        session.get_one(User, owner_id, with_for_update=True).webhook_secret = secret
    return secret


@dataclass(frozen=True)
class DeliveryRecord:
    id: str
    event: str
    url: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime


class Deliveries:
    """Sending deliveries, and listing a task's to its owner. ``render`` turns a task into
    the JSON its owner gets from the native API (the web layer's, handed in)."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        reads: TaskReads,
        render: Callable[[TaskRecord], dict[str, Any]],
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.reads = reads
        self.render = render

    def of_task(self, owner_id: uuid.UUID, task_id: str | uuid.UUID) -> list[DeliveryRecord]:
        task_id = parse_id(task_id)
        with self.sessions() as session:
            owned = session.scalar(
                select(Task.id).where(Task.id == task_id, Task.owner_id == owner_id)
            )
            if owned is None:
                raise NotFound(f"no task {task_id}")
            query = select(WebhookDelivery).where(WebhookDelivery.task_id == task_id)
            rows = session.scalars(query.order_by(WebhookDelivery.created_at))
            return [
                DeliveryRecord(
                    message_id(r.id),
                    r.event,
                    r.url,
                    r.state,
                    r.attempts,
                    r.last_status,
                    r.last_error,
                    r.next_attempt_at,
                    r.delivered_at,
                    r.created_at,
                )
                for r in rows
            ]

    def deliver(self, delivery_id: str) -> None:
        """One try of a delivery (a job's work); schedules the next try if it failed."""
        claimed = self._claim(uuid.UUID(delivery_id))
        if claimed is None:
            return
        row, owner_id, secret = claimed
        record = self.reads.get(owner_id, row.task_id)
        timestamp = int(time.time())
        body = json.dumps(
            {
                "type": row.event,
                "timestamp": datetime.fromtimestamp(timestamp, UTC).isoformat(),
                "data": self.render(record),
            },
            separators=(",", ":"),
        ).encode()
        msg = message_id(row.id)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg, timestamp, body),
        }
        status, error = None, None
        try:
            status = fetch.post(
                row.url,
                body,
                headers,
                field="webhook_url",
                timeout=self.settings.webhook_timeout,
                settings=self.settings,
            )
        except InvalidRequest as exc:
            error = exc.message.removeprefix("webhook_url: ")
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        self._record(row.id, row.attempts + 1, status, error)

    def _claim(self, delivery_id: uuid.UUID) -> tuple[WebhookDelivery, uuid.UUID, str] | None:
        """The pending delivery, leased to this try; None if it is done or leased already."""
        with self.sessions.begin() as session:
            row = session.scalar(
                select(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .with_for_update(skip_locked=True)
            )
            now = datetime.now(UTC)
            if (
                row is None
                or row.state != "pending"
                or (
                    row.next_attempt_at is not None
                    and row.next_attempt_at > now + timedelta(seconds=1)
                )
            ):
                return None
            owner_id, secret = session.execute(
                select(User.id, User.webhook_secret)
                .join(Task, Task.owner_id == User.id)
                .where(Task.id == row.task_id)
            ).one()
            if secret is None:  # (only a secret removed by hand: webhooks get one at submit)
                secret = new_secret()
                session.get_one(User, owner_id).webhook_secret = secret
            row.next_attempt_at = now + _LEASE
            session.flush()
            session.expunge(row)
            return row, owner_id, secret

    def _record(
        self, delivery_id: uuid.UUID, attempts: int, status: int | None, error: str | None
    ) -> None:
        with self.sessions.begin() as session:
            row = session.get_one(WebhookDelivery, delivery_id, with_for_update=True)
            row.attempts, row.last_status, row.last_error = attempts, status, error
            now = datetime.now(UTC)
            if error is None:
                row.state, row.delivered_at, row.next_attempt_at = "delivered", now, None
            elif attempts >= self.settings.webhook_attempts:
                row.state, row.next_attempt_at = "failed", None
                log.warning(
                    "webhook %s for task %s given up after %d tries: %s",
                    message_id(row.id),
                    row.task_id,
                    attempts,
                    error,
                )
            else:
                wait = self.settings.webhook_backoff_seconds * 2 ** (attempts - 1)
                row.next_attempt_at = now + timedelta(seconds=wait)
                session.execute(
                    _REDEFER,
                    {
                        "queue": QUEUE,
                        "task_name": TASK_NAME,
                        "args": json.dumps({"delivery_id": str(row.id)}),
                        "at": row.next_attempt_at,
                    },
                )
