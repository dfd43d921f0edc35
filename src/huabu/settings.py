"""The one configuration object: environment variables with the ``HUABU_`` prefix."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # Request limits, enforced by the native request validator for every dialect.
    min_size: int = Field(default=64, ge=8)
    max_size: int = Field(default=2048, ge=8)
    max_pixels: int = Field(default=2048 * 2048, description="Output width × height, per image.")
    max_input_pixels: int = Field(
        default=4096 * 4096, description="Decoded input image pixel cap (decompression bombs)."
    )
    max_images: int = Field(default=8, ge=1)
    max_steps: int = Field(default=150, ge=1)

    @cached_property
    def models_dir(self) -> Path:
        return self.home.resolve() / "models"

    @cached_property
    def cache_dir(self) -> Path:
        return self.home.resolve() / "cache"
