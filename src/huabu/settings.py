"""The one configuration object: environment variables with the ``HUABU_`` prefix."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: torch.compile backends HUABU_COMPILE_BACKEND may name (torch's own; no extra packages).
COMPILE_BACKENDS = ("inductor", "cudagraphs", "aot_eager", "eager")


class Settings(BaseSettings):
    """Everything huabu can be configured with. Build it once and pass it down."""

    model_config = SettingsConfigDict(env_prefix="HUABU_", extra="ignore")

    home: Path = Field(default=Path(".huabu"), description="Data directory (models, cache).")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.")
    pipeline_cache_size: int = Field(default=2, ge=1, description="Checkpoints kept loaded.")
    allow_pickle: bool = Field(
        default=False, description="Load pickled .ckpt/.pt checkpoints (can run arbitrary code)."
    )
    threads: int = Field(default=0, ge=0, description="torch CPU threads; 0 = torch's default.")
    database_url: str | None = Field(
        default=None,
        description="External PostgreSQL (postgresql://...); unset = embedded, under HUABU_HOME.",
    )

    # Service: HTTP, auth, queue.
    host: str = Field(default="127.0.0.1", description="`huabu serve` bind address.")
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = Field(
        default=None,
        description="Base of the URLs handed to clients (behind a proxy); unset = as requested.",
    )
    anonymous: bool = Field(
        default=False, description="Accept requests without credentials, as one anonymous user."
    )
    worker: bool = Field(default=True, description="Run a worker inside `huabu serve`.")
    secret_key: str | None = Field(
        default=None,
        description="Signs file URLs; unset = generated once into HUABU_HOME/secret_key. "
        "Every server of one installation needs the same one.",
    )
    url_ttl: int = Field(default=7 * 24 * 3600, ge=60, description="Signed file URL lifetime, s.")
    session_ttl: int = Field(
        default=30 * 24 * 3600, ge=60, description="Login session lifetime, s."
    )
    max_queued_per_user: int = Field(default=100, ge=1, description="Unfinished tasks per user.")
    max_queued: int = Field(default=10_000, ge=1, description="Unfinished tasks, all users.")
    max_body_bytes: int = Field(default=50 * 2**20, ge=1024, description="HTTP request body cap.")
    max_header_bytes: int = Field(
        default=64 * 1024, ge=4096, description="HTTP request line and headers cap (431 over it)."
    )
    log_format: str = Field(
        default="text",
        description="'text' (control characters in messages escaped) or 'json' (one object "
        "a line).",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="A request's line and headers must arrive within this, s; a connection "
        "that sends nothing for this long is closed.",
    )
    keep_alive_seconds: int = Field(
        default=5, ge=1, le=300, description="An idle kept-alive connection is closed after, s."
    )
    max_connections: int = Field(
        default=1000, ge=1, description="Open HTTP connections; a new one past it is closed."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (with :port if not 80/443) requests may name in Host when "
        "HUABU_PUBLIC_URL is unset; empty = the bound address and loopback names on the "
        "bound port. Another Host is a 400 (signed URLs are built from it).",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Proxies (comma-separated IPs or CIDRs, or '*') whose X-Forwarded-For / "
        "-Proto are believed; empty = none.",
    )
    login_attempts: int = Field(
        default=5,
        ge=1,
        description="Wrong passwords in a row for one account before each further try must "
        "wait; the wait doubles with each failure, from 1 s up to 5 minutes.",
    )
    login_address_attempts: int = Field(
        default=20,
        ge=1,
        description="The same, for wrong passwords from one client address (any accounts).",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Runs of one task (a worker died mid-task) before it fails."
    )
    heartbeat_seconds: float = Field(default=2.0, gt=0, description="Worker heartbeat interval.")
    stalled_seconds: float = Field(
        default=10.0, gt=0, description="A worker silent this long is dead; its task is re-run."
    )

    default_model: str | None = Field(
        default=None,
        description="Checkpoint for dialects whose requests name none; unset = the first "
        "checkpoint in the library by name.",
    )
    refiner_model: str | None = Field(
        default=None,
        description="The SDXL refiner for dialects whose refiner names none (novita's "
        "refiner.switch_at); unset = the library's only SDXL refiner, if it has exactly one.",
    )
    sync_timeout: float = Field(
        default=300.0, gt=0, description="How long synchronous APIs (/txt2img) wait, s."
    )

    fetch_allow: list[str] = Field(
        default_factory=list,
        description="Networks (CIDR) the URL fetcher may reach although they are not public, "
        "e.g. '[\"10.1.2.0/24\"]' for an internal image store.",
    )
    fetch_timeout: float = Field(default=15.0, gt=0, description="Whole fetch of one URL, s.")
    retention_days: float = Field(
        default=0,
        ge=0,
        description="Generation tasks finished longer ago are deleted with "
        "their images; 0 = keep forever.",
    )
    min_free_bytes: int = Field(
        default=0,
        ge=0,
        description="New work is refused (507) while the local storage has "
        "less free space; 0 = no check.",
    )
    metrics_public: bool = Field(
        default=False, description="Serve /metrics without credentials (else admins only)."
    )
    webhook_timeout: float = Field(
        default=10.0, gt=0, le=300, description="How long a webhook receiver may take to answer, s."
    )
    webhook_attempts: int = Field(
        default=6, ge=1, le=20, description="Tries of one webhook delivery before it is given up."
    )
    webhook_backoff_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Wait before a webhook's second try; it doubles for each try after.",
    )
    fetch_max_bytes: int = Field(default=30 * 2**20, ge=1024, description="Fetched image cap.")
    max_image_bytes: int = Field(
        default=30 * 2**20, ge=1024, description="Cap on one uploaded (or sent) image, bytes."
    )

    # Request limits, enforced by the native request validator for every dialect.
    min_size: int = Field(default=64, ge=8)
    max_size: int = Field(default=2048, ge=8)
    max_pixels: int = Field(default=2048 * 2048, description="Output width × height, per image.")
    max_input_pixels: int = Field(
        default=4096 * 4096, description="Decoded input image pixel cap (decompression bombs)."
    )
    max_request_pixels: int = Field(
        default=128 * 2**20,
        ge=1,
        description="Pixels of all the images one request sends, together; counted from their "
        "headers before any is decoded (a dataset upload of 500 images of 512² fits).",
    )
    decode_slots: int = Field(
        default=2, ge=1, description="Images an API process decodes at once (memory bound)."
    )
    max_images: int = Field(default=8, ge=1)
    max_steps: int = Field(default=150, ge=1)

    preview_seconds: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="How often a running task's live preview (A1111's Approx cheap, at 1/8 of "
        "the image's size) is refreshed, s; 0 = no previews.",
    )
    vae_tile_size: int = Field(
        default=1024,
        ge=0,
        description="Images larger than this many pixels on a side are decoded (and encoded) "
        "by the VAE in overlapping tiles of this size, so its memory stays bounded; 0 = never.",
    )

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("text", "json"):
            raise ValueError("must be 'text' or 'json'")
        return value

    @field_validator("vae_tile_size")
    @classmethod
    def _vae_tile_size(cls, value: int) -> int:
        if value and (value < 64 or value % 8):
            raise ValueError("must be 0 (no tiling) or a multiple of 8 from 64 up")
        return value

    compile: bool = Field(
        default=False,
        description="torch.compile each model's UNet when it loads (channels-last memory, "
        "fused attention projections), warmed up at load; LoRAs are then hot-swapped.",
    )
    compile_backend: str = Field(
        default="inductor",
        description="torch.compile backend: inductor (kernels; needs gcc on CPU), cudagraphs, "
        "aot_eager or eager (both only trace: for checking, not speed).",
    )
    compile_recompiles: int = Field(
        default=16,
        ge=1,
        le=64,
        description="Graphs of the UNet compiled per worker (its models together) for new "
        "shapes (sizes, batch sizes) and variants before further ones run uncompiled.",
    )
    quantize: Literal["auto", "none", "fp8", "int8", "nf4"] = Field(
        default="auto",
        description="How a flow model's transformer is held: as loaded (none), float8 or "
        "int8 weights (torchao, weight-only), nf4 (bitsandbytes, CUDA only); auto chooses "
        "from the model's size and the device's free memory (a GGUF file keeps its own).",
    )
    offload: Literal["auto", "none", "model", "group", "sequential"] = Field(
        default="auto",
        description="Where a flow model's weights wait while others run: on the device "
        "(none), in RAM a whole component at a time (model), a block at a time with streams "
        "(group), or layer by layer (sequential); GPUs only. auto chooses as quantize does.",
    )
    lora_max_rank: int = Field(
        default=128,
        ge=1,
        le=1024,
        description="Compiled models pad LoRAs to this rank, so that any LoRA up to it swaps "
        "in without recompiling.",
    )

    @field_validator("compile_backend")
    @classmethod
    def _compile_backend(cls, value: str) -> str:
        if value not in COMPILE_BACKENDS:
            raise ValueError(f"must be one of {', '.join(COMPILE_BACKENDS)}")
        return value

    # LoRA training (spec 001): defaults for what a request does not say, and its bounds.
    worker_training: bool = Field(
        default=True, description="This process's worker takes training jobs."
    )
    worker_generation: bool = Field(
        default=True, description="This process's worker takes generation jobs."
    )
    max_pass_over_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A worker prefers jobs for a checkpoint it has loaded, but takes the "
        "oldest job it can serve once that has waited this long.",
    )
    max_batch: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Queued generation tasks a worker runs in one denoising loop when they "
        "can share it (same checkpoint, size, steps, sampler, LoRAs); 1 = one at a time.",
    )
    batch_wait_ms: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="How long a worker holds a batch open for more tasks to arrive, ms; "
        "0 = only what is queued already.",
    )
    model_cache_bytes: int = Field(
        default=100 * 2**30,
        ge=2**20,
        description="Bound on the worker's cache of models downloaded from the shared store.",
    )
    train_steps: int = Field(default=800, ge=1, description="Default training steps.")
    train_max_steps: int = Field(default=5000, ge=1, description="Most steps a request may ask.")
    train_rank: int = Field(default=8, ge=1, le=128, description="Default LoRA rank.")
    train_learning_rate: float = Field(default=1e-4, gt=0, description="Default AdamW rate.")
    train_resolution: int | None = Field(
        default=None, description="Training image size; unset = the base model's native size."
    )
    train_batch_size: int = Field(default=4, ge=1, le=64)
    max_dataset_images: int = Field(default=500, ge=1, description="Images per training run.")
    storage_url: str | None = Field(
        default=None,
        description="Where images, previews and uploads live: file:///path, or "
        "s3://bucket/prefix; unset = file://$HUABU_HOME/files.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="An S3-compatible service (MinIO, Ceph RGW, R2); unset = AWS."
    )

    @field_validator("storage_url")
    @classmethod
    def _storage_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        scheme, _, rest = value.strip().partition("://")
        if scheme == "file" and rest.startswith("/"):
            return value.strip()
        if scheme == "s3" and rest and not rest.startswith("/") and " " not in rest:
            return value.strip()
        raise ValueError("must be file:///absolute/path or s3://bucket[/prefix]")

    @property
    def worker_kinds(self) -> list[str]:
        """The kinds of job a worker of these settings takes (never none)."""
        from huabu.errors import WorkerMisconfigured

        kinds = [
            kind
            for kind, takes in (
                ("generate", self.worker_generation),
                ("train", self.worker_training),
            )
            if takes
        ]
        if not kinds:
            raise WorkerMisconfigured(
                "HUABU_WORKER_GENERATION and HUABU_WORKER_TRAINING are both false: a worker "
                "would take no job"
            )
        return kinds

    @cached_property
    def models_dir(self) -> Path:
        return self.home.resolve() / "models"

    @cached_property
    def files_dir(self) -> Path:
        return self.home.resolve() / "files"

    @cached_property
    def cache_dir(self) -> Path:
        return self.home.resolve() / "cache"
