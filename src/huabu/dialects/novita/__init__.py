"""novita's v3 async API (spec 003): ``POST /v3/async/txt2img``, ``POST /v3/async/img2img``,
``GET /v3/async/task-result?task_id=``, ``GET /v3/model``. Shapes as the official
``novita-client`` SDK reads them (``novita_client/proto.py``), so the SDK works against huabu by
changing only its ``base_url``. Errors: ``{"code", "reason", "message", "metadata"}``.

The refiner (``refiner.switch_at``) runs ``HUABU_REFINER_MODEL``, or the library's only SDXL
refiner. Not yet available here (refused with a 400 naming the field): hires_fix on img2img.
novita's model-based upscalers (RealESRGAN_x4plus_anime_6B, RealESRNet_x4plus) need weights this
server does not have and are refused by name.
"""

from __future__ import annotations

from huabu.dialects.novita.translate import (
    from_native,
    model_name,
    prefixed,
    refiner_for,
    renamed,
    to_native,
    unsupported,
)
from huabu.dialects.novita.wire import (
    ORIGIN,
    PREFIX,
    ControlNetIn,
    ControlUnitIn,
    DebugInfo,
    Envelope,
    ErrorOut,
    ExtraIn,
    HiresFixIn,
    ImageOut,
    Img2ImgIn,
    IpAdapterIn,
    LoraIn,
    ModelOut,
    ModelsOut,
    ModelType,
    NamedIn,
    Pagination,
    RefinerIn,
    ResultExtra,
    SubmitOut,
    TaskOut,
    TaskResultOut,
    Txt2ImgIn,
    WebhookIn,
    render_error,
)

__all__ = [
    "ControlNetIn",
    "ControlUnitIn",
    "DebugInfo",
    "Envelope",
    "ErrorOut",
    "ExtraIn",
    "HiresFixIn",
    "ImageOut",
    "Img2ImgIn",
    "IpAdapterIn",
    "LoraIn",
    "ModelOut",
    "ModelType",
    "ModelsOut",
    "NamedIn",
    "ORIGIN",
    "PREFIX",
    "Pagination",
    "RefinerIn",
    "ResultExtra",
    "SubmitOut",
    "TaskOut",
    "TaskResultOut",
    "Txt2ImgIn",
    "WebhookIn",
    "from_native",
    "model_name",
    "prefixed",
    "refiner_for",
    "renamed",
    "render_error",
    "to_native",
    "unsupported",
]
