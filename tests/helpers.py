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


def publish_library(settings, sessions, kinds=None) -> list[str]:
    """Publish every model of ``settings``' library (of ``kinds``) into its store, as `huabu
    models publish` does: an API-only server with no worker then knows them."""
    from huabu.catalog.library import ModelLibrary
    from huabu.catalog.transfer import publish
    from huabu.storage import open_storage

    library, storage = ModelLibrary(settings), open_storage(settings)
    published = []
    for kind in kinds or library.kinds:
        for entry in library.entries(kind):
            publish(sessions, storage, library, entry)
            published.append(f"{kind}/{entry.name}")
    return published


def source_differences(engine, request) -> tuple[int, int]:
    """Image-to-image from a red and from a blue source at strength 0.5 (``request(**changes)``
    builds the request): how far apart the two results are, and how far the first is from the
    same seed's text-to-image. A tiny demo's random VAE does not give a source back, so that
    the source changes the image is what such a test can show, not closeness to it."""
    made = [
        engine.generate(
            request(init_image=ImageRef(key="x"), strength=0.5),
            init_image=Image.new("RGB", (64, 64), colour),
        ).images[0]
        for colour in ((220, 30, 30), (30, 30, 220))
    ]
    return max_difference(made[0], made[1]), max_difference(
        made[0], engine.generate(request()).images[0]
    )
