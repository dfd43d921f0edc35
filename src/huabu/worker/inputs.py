"""A generation's input images, read back from storage for the engine (worker and CLI alike)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from huabu.errors import InvalidRequest
from huabu.images import decode_image
from huabu.native import GenerationRequest


def input_images(
    request: GenerationRequest, read: Callable[[str], bytes], max_pixels: int
) -> dict[str, Any]:
    """The engine's image arguments for ``request``: each input image read from its storage
    key and decoded under the same limits as at submit."""

    def image(field: str) -> Image.Image:
        ref = refs[field]
        if ref.key is None:
            raise InvalidRequest(f"{field}: the task holds no stored image", param=field)
        return decode_image(read(ref.key), field=field, max_pixels=max_pixels)

    refs = request.image_refs()
    return {
        "init_image": image("init_image") if "init_image" in refs else None,
        "mask_image": image("inpaint.mask") if "inpaint.mask" in refs else None,
        "control_images": [
            image(f"controlnets.{index}.image") for index in range(len(request.controlnets))
        ],
        "ip_image": image("ip_adapter.image") if "ip_adapter.image" in refs else None,
    }
