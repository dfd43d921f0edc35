"""The native training request, and the plan a worker runs: what every dialect's training
routes translate to. Validation happens here, with errors naming the field."""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

from huabu.errors import InvalidRequest
from huabu.native.generation import MAX_SEED, Name, Text

if TYPE_CHECKING:
    from huabu.settings import Settings

#: A database row id (PostgreSQL ``integer``): larger numbers name nothing.
RowId = Annotated[int, Field(ge=1, le=2**31 - 1)]
#: What the images show (spec 001's ``main_body``), and the words it adds to every caption.
MAIN_BODIES = {
    "Style": "art style",
    "Human": "a person",
    "Architecture": "a building",
    "Plants": "a plant",
    "Animals": "an animal",
}
_UNSAFE = re.compile(r"[^\w.-]+")


def model_name(name: str) -> str:
    """The name a trained model is used by: spaces and punctuation become ``_`` (spec 001's
    "train model1" is used as "train_model1")."""
    cleaned = _UNSAFE.sub("_", name.strip()).strip("._")
    if not cleaned:
        raise InvalidRequest(f"name: {name!r} has no letters or digits", param="name")
    return cleaned


def caption(trigger_word: str, main_body: str) -> str:
    """Every training image's caption: the trigger word, then what the images show."""
    return ", ".join(part for part in (trigger_word.strip(), MAIN_BODIES[main_body]) if part)


class TrainingRequest(BaseModel):
    """Train a LoRA called ``name`` on ``base_model`` from the caller's ``datasets``.
    Unset numbers take the server's defaults (``HUABU_TRAIN_*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Text = Field(min_length=1, max_length=100)
    base_model: Name | None = None
    datasets: tuple[RowId, ...] = Field(min_length=1, max_length=50)
    trigger_word: Text = Field(default="", max_length=200)
    main_body: Text = "Style"
    description: Text = Field(default="", max_length=4000)
    nsfw: bool = False
    steps: int | None = Field(default=None, ge=1)
    rank: int | None = Field(default=None, ge=1, le=128)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    resolution: int | None = Field(default=None, ge=64, le=2048)
    seed: int = Field(default=-1, ge=-1, le=MAX_SEED)

    def checked(self, settings: Settings) -> TrainingRequest:
        """Canonical name and main_body, the server's bounds, and every default filled in."""
        bodies = {key.lower(): key for key in MAIN_BODIES}
        main_body = bodies.get(self.main_body.strip().lower())
        if main_body is None:
            raise InvalidRequest(
                f"main_body must be one of {', '.join(MAIN_BODIES)}, got {self.main_body!r}",
                param="main_body",
            )
        steps = self.steps or settings.train_steps
        if steps > settings.train_max_steps:
            raise InvalidRequest(
                f"steps must be between 1 and {settings.train_max_steps}, got {steps}",
                param="steps",
            )
        resolution = self.resolution or settings.train_resolution
        if resolution is not None and resolution % 8:
            raise InvalidRequest(
                f"resolution must be a multiple of 8, got {resolution}", param="resolution"
            )
        return self.model_copy(
            update={
                "name": model_name(self.name),
                "main_body": main_body,
                "steps": steps,
                "rank": self.rank or settings.train_rank,
                "learning_rate": self.learning_rate or settings.train_learning_rate,
                "resolution": resolution,
                "seed": self.seed if self.seed >= 0 else secrets.randbelow(MAX_SEED),
            }
        )


class TrainingPlan(TrainingRequest):
    """A checked request, resolved by the service: what the worker trains."""

    base_model: str
    steps: int
    rank: int
    learning_rate: float
    #: The LoRA's qualified private library name (``@<owner>/<name>``).
    lora: str
    #: Storage keys of the training images (the datasets' uploads, deduplicated).
    images: tuple[str, ...]
    caption: str
    #: None: the training worker's HUABU_TRAIN_BATCH_SIZE (what fits its GPU).
    batch_size: int | None = None
