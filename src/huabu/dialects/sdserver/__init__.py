"""The plain "Stable Diffusion API Server" (spec 004): synchronous ``POST /txt2img`` and
``POST /img2img``; form-urlencoded bodies (JSON accepted too); the answer comes once the
images exist: ``{"images": [{"image_url", "mime_type", "seed"}], "status": "success"}``.

The spec names no model: requests use the server's default checkpoint (HUABU_DEFAULT_MODEL).
"""

from __future__ import annotations

from huabu.dialects.sdserver.translate import from_native, round8, to_native
from huabu.dialects.sdserver.wire import (
    ORIGIN,
    PATHS,
    ErrorOut,
    ImageOut,
    ImagesOut,
    Img2ImgForm,
    Txt2ImgForm,
    render_error,
)

__all__ = [
    "ErrorOut",
    "ImageOut",
    "ImagesOut",
    "Img2ImgForm",
    "ORIGIN",
    "PATHS",
    "Txt2ImgForm",
    "from_native",
    "render_error",
    "round8",
    "to_native",
]
