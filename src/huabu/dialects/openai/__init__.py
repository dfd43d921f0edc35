"""The OpenAI images API, for clients configured with ``base_url=http://HOST:PORT/v1``:
``images/generations``, ``images/edits`` (image-to-image, or inpainting with a mask),
``images/variations``, and ``models``. Synchronous like OpenAI's; errors in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``.

OpenAI's model names (``dall-e-2``, ``dall-e-3``, ``gpt-image-…``) mean the server's default
checkpoint; any checkpoint's name (or one's own trained model's) picks that one. ``quality``
sets the number of steps; ``style`` is accepted and has no effect.
"""

from __future__ import annotations

from huabu.dialects.openai.translate import model_out, native_square, renamed, to_native
from huabu.dialects.openai.wire import (
    ORIGIN,
    PREFIX,
    EditForm,
    EditIn,
    ErrorDetail,
    ErrorOut,
    GenerationIn,
    ImageOut,
    ImagesOut,
    ModelOut,
    ModelsOut,
    render_error,
)

__all__ = [
    "EditForm",
    "EditIn",
    "ErrorDetail",
    "ErrorOut",
    "GenerationIn",
    "ImageOut",
    "ImagesOut",
    "ModelOut",
    "ModelsOut",
    "ORIGIN",
    "PREFIX",
    "model_out",
    "native_square",
    "renamed",
    "render_error",
    "to_native",
]
