import io

import numpy as np
from PIL import Image

from huabu.native import ImageRef


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_difference(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


#: An input image reference as a queued task holds it (engine tests pass the image itself).
REF = ImageRef(key="uploads/ref.png")


def loaded(engine, name: str):
    """The cached model ``name`` of ``engine``, to inspect (its lease is returned at once)."""
    with engine.cache.lease(name) as model:
        return model
