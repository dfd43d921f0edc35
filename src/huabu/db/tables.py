"""The schema huabu owns (procrastinate keeps its own tables beside these)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(200))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: Per-user settings of the dialects that have them (A1111's ``options``).
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    #: The level this user's tasks queue at, and the most a request may ask (``tasks.fairness``).
    priority: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    #: Quotas (``tasks.quotas``); None: no limit.
    images_per_day: Mapped[int | None] = mapped_column(Integer)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    #: A disabled user's credentials (password, sessions, keys) are refused.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: Signs their webhooks (``whsec_…``, ``tasks.webhooks``).
    webhook_secret: Mapped[str | None] = mapped_column(String(64))


class ApiKey(Base):
    """An API key: ``hb_<prefix>_<secret>``; the prefix finds the row, the secret is hashed."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: The priority of calls with this key, instead of its user's (None: the user's).
    priority: Mapped[int | None] = mapped_column(SmallInteger)
    #: Quotas of this key's calls, on top of its user's (None: only the user's).
    images_per_day: Mapped[int | None] = mapped_column(Integer)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    #: When a server last looked the key up (not every call: servers cache keys for seconds).
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuthSession(Base):
    """A login session: a random bearer token, stored as its SHA-256 digest, with an expiry."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Upload(Base):
    """An image a user uploaded (img2img sources, later ControlNet inputs and datasets)."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Task(Base):
    """One unit of queued work, whatever dialect it came from. Its job lives in procrastinate's
    tables (``job_id``); this row is what users see: state, progress, result, error."""

    __tablename__ = "tasks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    model: Mapped[str] = mapped_column(String(255))
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    #: Relative cost (steps × pixels × images), the unit the ETA estimator measures speed in.
    work: Mapped[float] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    #: Runs so far; never goes down (``attempts`` does, for a clean hand-back). Fences the
    #: writes of a run: a run whose number is not the task's any more writes nothing.
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    #: The task's place in the fair order between users (see ``tasks.fairness``).
    fair_rank: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: The level it was queued at: higher levels go first (``tasks.fairness``).
    priority: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    #: Queued generation tasks with equal keys can share one denoising loop (``worker.batcher``);
    #: None: the task runs alone.
    batch_key: Mapped[str | None] = mapped_column(String(64))
    #: How many tasks the task's last run shared its loop with (itself included).
    batch_size: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    #: The work of all the tasks of that run (None: not run yet).
    batch_work: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    #: The API key it was submitted with (None: a session or the CLI), for per-key quotas.
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    #: Images it asks for (0 for training): what the images-per-day quota counts.
    images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: Where its end is announced (``tasks.webhooks``; None: nowhere).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    #: When its owner deleted it: it reads as gone, its files are removed, and the row goes
    #: two days later (``tasks.retention``).
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TaskRun(Base):
    """One run of a task: the worker (host, device) that ran it, the attempt it was charged
    as, and how it ended (succeeded, failed, cancelled, handed back, abandoned, worker lost,
    superseded)."""

    __tablename__ = "task_runs"

    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    run: Mapped[int] = mapped_column(Integer, primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(32))


class LivePreview(Base):
    """A running task's newest live preview (a PNG at the latent size), written with its
    progress; removed when the run ends."""

    __tablename__ = "live_previews"

    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    #: ``tasks.runs`` when written: a preview of an earlier run is stale.
    run: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)


class PartialImage(Base):
    """A live preview kept at a step the request chose (``partial_images``), for its run."""

    __tablename__ = "partial_images"

    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    run: Mapped[int] = mapped_column(Integer, primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    image: Mapped[bytes] = mapped_column(LargeBinary)


class WorkerRow(Base):
    """What a worker advertises with its heartbeat (``last_seen``); kept after it stops
    (``stopped_at``) so the fleet view can say it left."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(64))
    kinds: Mapped[list[str]] = mapped_column(JSONB)
    loaded: Mapped[list[str]] = mapped_column(JSONB)
    #: ``kind/name`` of every model on its own disk (see ``catalog.shared``).
    models: Mapped[list[str]] = mapped_column(JSONB, server_default="[]")
    #: Checkpoints loaded since it started (a worker that loads often is thrashing).
    loads: Mapped[int] = mapped_column(Integer, server_default="0")
    #: Seconds those loads took, and torch's allocated GPU memory now (None: no GPU).
    load_seconds: Mapped[float] = mapped_column(Float, server_default="0")
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    #: How each loaded flow model fits the device: ``{"name": "fp8 + model offload"}``.
    memory_plans: Mapped[dict[str, str]] = mapped_column(JSONB, server_default="{}")
    current_task: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TaskImage(Base):
    """One image a task produced: stored once, plus a downscaled preview."""

    __tablename__ = "task_images"
    __table_args__ = (UniqueConstraint("task_id", "index"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[str] = mapped_column(String(300))
    preview_key: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(8))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    infotext: Mapped[str] = mapped_column(Text)


class Dataset(Base):
    """A user's named set of uploaded images to train on (spec 001 numbers them)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    #: Storage keys of the owner's uploads, in the order given.
    images: Mapped[list[str]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TrainedModel(Base):
    """A model a user trains: its name is reserved when training is queued, and it can be
    used once its task has succeeded. Private to its owner; names are unique per owner."""

    __tablename__ = "trained_models"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    task_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    base_model: Mapped[str] = mapped_column(String(255))
    trigger_word: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    main_body: Mapped[str] = mapped_column(String(32))
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class IdempotencyKey(Base):
    """A submit's ``Idempotency-Key``: the same key with the same body returns this task for
    24 hours (``tasks.idempotency``)."""

    __tablename__ = "idempotency_keys"

    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 of the method, path and body of the request that first used it.
    fingerprint: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditEntry(Base):
    """Who did what to whom: every admin action, through the admin API or the CLI."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    #: The admin's email, or ``cli:<os user>`` for the command line.
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(400))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


class WebhookDelivery(Base):
    """One announcement of a task's end to its webhook URL, and how its tries went. Queued
    by a database trigger when the task finishes (migration 0013); sent by ``huabu serve``."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    task_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    #: pending, delivered or failed (every try used).
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MetricBaseline(Base):
    """Counts of task rows that retention deleted, added to ``/metrics``' counters so that
    they never go down (``tasks.metrics``)."""

    __tablename__ = "metric_baselines"

    metric: Mapped[str] = mapped_column(String(100), primary_key=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, primary_key=True)
    value: Mapped[float] = mapped_column(Float)
