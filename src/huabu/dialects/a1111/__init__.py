"""The A1111 ``sdapi/v1`` wire shapes and their pure translation to and from the native
model: request bodies, ``<lora:name:weight>`` in prompts, sampler + scheduler names,
sd-webui-controlnet units, and the ``info`` JSON.

AUTOMATIC1111's ``/sdapi/v1`` API, as its clients (``webuiapi``, painting-program plugins,
bots) call it: synchronous ``txt2img`` / ``img2img`` with base64 images, and the listing,
options, progress and interrupt routes around them.

Unlike A1111 it is multi-user: ``options`` (the checkpoint a request without
``override_settings`` uses) are per user, and ``progress`` / ``interrupt`` / ``skip`` see the
caller's own task only. Auth: A1111's HTTP Basic (email and password, or email and API key)
or a Bearer key. The wire shapes and their translation are in ``a1111_wire``.
"""

from __future__ import annotations

from huabu.dialects.a1111.translate import (
    SCHEDULERS,
    control_units,
    hires,
    info,
    lora_tags,
    model_name,
    options_in,
    options_out,
    progress_out,
    refiner,
    renamed,
    sampler,
    split_loras,
    to_native,
)
from huabu.dialects.a1111.wire import (
    CONTROLNET_PREFIX,
    ORIGIN,
    PREFIX,
    ControlNetArg,
    ControlNetModelsOut,
    ControlNetModulesOut,
    ErrorOut,
    ImagesOut,
    Img2ImgIn,
    OptionsIn,
    PngInfoIn,
    PngInfoOut,
    ProgressOut,
    ProgressState,
    Txt2ImgIn,
    render_error,
)

__all__ = [
    "CONTROLNET_PREFIX",
    "ControlNetArg",
    "ControlNetModelsOut",
    "ControlNetModulesOut",
    "ErrorOut",
    "ImagesOut",
    "Img2ImgIn",
    "ORIGIN",
    "OptionsIn",
    "PREFIX",
    "PngInfoIn",
    "PngInfoOut",
    "ProgressOut",
    "ProgressState",
    "SCHEDULERS",
    "Txt2ImgIn",
    "control_units",
    "hires",
    "info",
    "lora_tags",
    "model_name",
    "options_in",
    "options_out",
    "progress_out",
    "refiner",
    "renamed",
    "render_error",
    "sampler",
    "split_loras",
    "to_native",
]
