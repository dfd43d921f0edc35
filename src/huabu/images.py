"""The one image decoder for every input (file, upload, base64, URL body).

Format allow-list, pixel cap read from the header *before* pixels are decoded (so a
decompression bomb costs nothing), EXIF orientation applied, RGB out (or the mode asked for).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from huabu.errors import InvalidRequest

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})

# PIL's own decompression-bomb limit stays on for the whole process as a backstop; the cap
# checked here (HUABU_MAX_INPUT_PIXELS) comes first.


def open_image(data: bytes, *, field: str, max_pixels: int) -> Image.Image:
    """The header of untrusted image bytes, checked (readable, an allowed format, at most
    ``max_pixels``) with no pixel decoded yet; or InvalidRequest naming ``field``. Its metadata
    (text chunks, EXIF) can be read; ``decode_image`` is the way to its pixels."""
    if not data:
        raise InvalidRequest(f"{field} is empty", param=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InvalidRequest(
            f"{field} declares more pixels than this server decodes; the limit is {max_pixels}",
            param=field,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(f"{field} is not a readable image", param=field) from None
    if image.format not in ALLOWED_FORMATS:
        raise InvalidRequest(
            f"{field} has format {image.format}; allowed: {', '.join(sorted(ALLOWED_FORMATS))}",
            param=field,
        )
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidRequest(
            f"{field} is {width}×{height} = {width * height} pixels; the limit is {max_pixels}",
            param=field,
        )
    return image


def decode_image(data: bytes, *, field: str, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Decode untrusted image bytes into an image of ``mode``, or raise InvalidRequest naming
    ``field``."""
    image = open_image(data, field=field, max_pixels=max_pixels)
    try:
        image.load()
        return ImageOps.exif_transpose(image).convert(mode)
    except (OSError, ValueError, SyntaxError):
        raise InvalidRequest(f"{field} is a truncated or corrupt image", param=field) from None


def repaint_mask(image: Image.Image, *, invert: bool, field: str) -> Image.Image:
    """An inpainting mask as greyscale, white where the image is repainted (inverted first if
    asked); refuses a mask that repaints nothing."""
    mask = image.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if mask.getbbox() is None:
        inverted = " once inverted" if invert else ""
        raise InvalidRequest(
            f"{field} marks nothing to repaint (it is all black{inverted}); "
            "white marks the pixels to repaint",
            param=field,
        )
    return mask


def alpha_mask(data: bytes, *, field: str, max_pixels: int) -> Image.Image | None:
    """OpenAI's masks: an image whose fully transparent pixels are the ones to repaint, as a
    greyscale mask (white = repaint). None when the image has no transparent pixel."""
    image = decode_image(data, field=field, max_pixels=max_pixels, mode="RGBA")
    alpha = image.getchannel("A")  # all 255 for an image without transparency
    mask = alpha.point(lambda value: 255 if value == 0 else 0)
    return mask if mask.getbbox() is not None else None


def decode_base64(text: str, *, field: str) -> bytes:
    """Bytes from base64 as clients send it: bare, or a ``data:image/...;base64,`` URL."""
    import base64
    import binascii

    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"{field} is empty", param=field)
    payload = text.strip()
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if ";base64" not in header:
            raise InvalidRequest(f"{field}: a data URL must be base64-encoded", param=field)
    payload = "".join(payload.split())  # line breaks some encoders insert
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field} is not valid base64", param=field) from None
