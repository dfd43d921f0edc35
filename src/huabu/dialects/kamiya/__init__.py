"""kamiya's image API (spec 002) under ``/api/image``: config, generate (text2image and
image2image), one task by ``hashid``, and the caller's list. Every response, errors included,
is the envelope ``{"status": <code>, "message": ..., "data": ...}``.

Ids: ``metaid`` is the task's UUID in hex, ``hashid`` the same number in base 36 (what the
status endpoint takes), ``id`` the first 7 characters of the hashid. Images are JPEG, as
kamiya's ``metadata.jpg`` promises.
"""

from __future__ import annotations

from huabu.dialects.kamiya.translate import from_native, hashid, renamed, task_id_of, to_native
from huabu.dialects.kamiya.wire import (
    ORIGIN,
    PREFIX,
    ConfigEnvelope,
    ConfigOut,
    ErrorOut,
    GenerateIn,
    LoRA,
    LoRAOut,
    MetadataOut,
    Named,
    TaskEnvelope,
    TaskOut,
    TasksEnvelope,
    envelope,
    render_error,
)

__all__ = [
    "ConfigEnvelope",
    "ConfigOut",
    "ErrorOut",
    "GenerateIn",
    "LoRA",
    "LoRAOut",
    "MetadataOut",
    "Named",
    "ORIGIN",
    "PREFIX",
    "TaskEnvelope",
    "TaskOut",
    "TasksEnvelope",
    "envelope",
    "from_native",
    "hashid",
    "renamed",
    "render_error",
    "task_id_of",
    "to_native",
]
