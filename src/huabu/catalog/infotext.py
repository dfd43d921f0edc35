"""Generation parameters inside image files, the way A1111 writes and reads them.

PNG: a ``parameters`` text chunk. JPEG/WebP: EXIF UserComment, ``UNICODE\\0`` + UTF-16BE (what
piexif's UserComment helper writes, and what A1111, ComfyUI readers and civitai parse).
The text ("infotext") is::

    a red fox
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model: demo
"""

from __future__ import annotations

import io
import json

from PIL import Image, PngImagePlugin

from huabu.native import GenerationRequest
from huabu.native.generation import ETA_ANY, ETA_OFF

#: The k-diffusion samplers A1111 gives an eta (written when it is not 1).
ETA_SAMPLERS = (ETA_ANY - {"DDIM"}) | set(ETA_OFF)

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_KEY_PUNCTUATION = frozenset(" -/")


def _number(value: float) -> str:
    return f"{value:g}"


def infotext(request: GenerationRequest, seed: int, *, model_hash: str | None = None) -> str:
    """The A1111 parameters text for one image of ``request`` generated with ``seed`` (a
    distilled guidance as Forge writes FLUX.1's: "Distilled CFG Scale")."""
    guidance = [("CFG scale", _number(request.guidance))]
    if request.distilled_guidance is not None:
        guidance.append(("Distilled CFG Scale", _number(request.distilled_guidance)))
    fields: list[tuple[str, str]] = [
        ("Steps", str(request.steps)),
        ("Sampler", request.sampler),
        *guidance,
        ("Seed", str(seed)),
        ("Size", f"{request.width}x{request.height}"),
    ]
    if model_hash:
        fields.append(("Model hash", model_hash))
    fields.append(("Model", request.model))
    if request.subseed_strength > 0:
        index = seed - request.seed  # image i uses seed + i and subseed + i
        fields.append(("Variation seed", str(request.subseed + index)))
        fields.append(("Variation seed strength", _number(request.subseed_strength)))
    if request.is_img2img:
        fields.append(("Denoising strength", _number(request.strength)))
    if request.hires is not None:
        hires = request.hires
        fields.append(("Denoising strength", _number(hires.strength)))
        if hires.resize_width or hires.resize_height:
            fields.append(("Hires resize", f"{hires.resize_width}x{hires.resize_height}"))
        else:
            fields.append(("Hires upscale", _number(hires.scale)))
        if hires.steps:
            fields.append(("Hires steps", str(hires.steps)))
        fields.append(("Hires upscaler", hires.upscaler))
    if request.sd_upscale is not None:  # A1111's script writes these two
        fields.append(("SD upscale overlap", str(request.sd_upscale.overlap)))
        fields.append(("SD upscale upscaler", request.sd_upscale.upscaler))
    if request.refiner is not None:
        fields.append(("Refiner", request.refiner.model))
        fields.append(("Refiner switch at", _number(request.refiner.switch_at)))
        if request.hires is not None and request.refiner.hires_pass != "second pass":
            fields.append(("Hires refiner", request.refiner.hires_pass))
    if request.inpaint is not None:
        fields.append(("Mask blur", str(request.inpaint.blur)))
        if request.inpaint.only_masked:
            fields.append(("Inpaint area", "Only masked"))
            fields.append(("Masked area padding", str(request.inpaint.padding)))
    if request.eta is not None:  # as A1111 writes it: where it differs from the default
        if request.sampler == "DDIM" and request.eta != 0:
            fields.append(("Eta DDIM", _number(request.eta)))
        elif request.sampler in ETA_SAMPLERS and request.eta != 1:
            fields.append(("Eta", _number(request.eta)))
    if request.clip_skip > 1:
        fields.append(("Clip skip", str(request.clip_skip)))
    if request.vae:
        fields.append(("VAE", request.vae))
    if request.tiling:
        fields.append(("Tiling", "True"))
    if request.loras:
        # A trained LoRA's private library name (@owner/name) is shown as its owner knows it.
        used = ", ".join(
            f"{lora.name.rpartition('/')[2]}:{_number(lora.weight)}" for lora in request.loras
        )
        fields.append(("LoRAs", used))
    # Each unit as sd-webui-controlnet writes it ("ControlNet 0": its fields as "Key: value"
    # pairs, quoted), with the fields huabu's units have; the module is huabu's preprocessor
    # name, which every dialect takes back.
    for index, unit in enumerate(request.controlnets):
        described = (
            f"Module: {unit.preprocessor}, Model: {unit.model}, "
            f"Weight: {_number(unit.scale)}, Guidance Start: {_number(unit.start)}, "
            f"Guidance End: {_number(unit.end)}"
        )
        fields.append((f"ControlNet {index}", described))
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in fields))
    return "\n".join(lines)


def _quote(value: str) -> str:
    if "," not in value and '"' not in value and "\n" not in value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _unquote(value: str) -> str:
    """A quoted value as A1111 reads it: a JSON string (the escapes ``_quote`` writes)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            unquoted = json.loads(value, strict=False)
        except ValueError:
            return value
        return unquoted if isinstance(unquoted, str) else value
    return value


def _key_char(char: str) -> bool:
    return char.isalnum() or char == "_" or char in _KEY_PUNCTUATION


def _quoted_end(line: str, start: int) -> int | None:
    """Where a quoted value opening at ``start`` ends (after its closing quote), if it closes
    with at least one character inside."""
    index, end = start + 1, len(line)
    while index < end:
        char = line[index]
        if char == "\\":
            if index + 1 >= end:
                return None
            index += 2
        elif char == '"':
            return index + 1 if index > start + 1 else None
        else:
            index += 1
    return None


def parameter_pairs(line: str) -> list[tuple[str, str]]:
    """The ``key: value`` pairs of an infotext's parameters line, exactly as A1111's
    ``re_param`` (``\\s*(\\w[\\w \\-/]+):\\s*("(?:\\\\.|[^\\\\"])+"|[^,]*)(?:,|$)``) finds them
    with ``findall``, in time linear in the line: that regex, retried at every position,
    takes time quadratic in a long run of key characters."""
    pairs: list[tuple[str, str]] = []
    position, end = 0, len(line)
    while position < end:
        key_start = position
        while key_start < end and line[key_start].isspace():
            key_start += 1
        if key_start >= end:
            break
        if not (line[key_start].isalnum() or line[key_start] == "_"):
            position = key_start + 1
            continue
        key_end = key_start + 1
        while key_end < end and _key_char(line[key_end]):
            key_end += 1
        if key_end >= end or line[key_end] != ":" or key_end - key_start < 2:
            # Every start up to key_end meets the same run and the same end: none can match.
            position = key_end if key_end > position else position + 1
            continue
        value_start = key_end + 1
        while value_start < end and line[value_start].isspace():
            value_start += 1
        value_end = None
        if value_start < end and line[value_start] == '"':
            closed = _quoted_end(line, value_start)
            if closed is not None and (closed == end or line[closed] == ","):
                value_end = closed
        if value_end is None:
            comma = line.find(",", value_start)
            value_end = end if comma < 0 else comma
        pairs.append((line[key_start:key_end], line[value_start:value_end]))
        position = value_end + 1 if value_end < end else end
    return pairs


def parse_infotext(text: str) -> dict[str, str]:
    """A1111 parameters text → ``{"Prompt", "Negative prompt", "Steps", …}`` (values as text),
    the way A1111's ``parse_generation_parameters`` reads it: the last line is the parameters
    line only if it holds at least three ``key: value`` pairs; otherwise all of it is prompt."""
    *head, last = text.strip().split("\n")
    pairs = parameter_pairs(last)
    if len(pairs) < 3:
        head, pairs = [*head, last], []
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in head:
        line = line.strip()
        if not negative_lines and line.startswith("Negative prompt:"):
            negative_lines.append(line.removeprefix("Negative prompt:").strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    result = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in pairs:
        result[key.strip()] = _unquote(value.strip())
    return result


def encode_image(
    image: Image.Image, fmt: str, parameters: str, quality: int | None = None
) -> bytes:
    """Encode ``image`` as png/jpeg/webp (at ``quality``, 92 unless given) with
    ``parameters`` embedded as A1111 does."""
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
        image.save(buffer, format="PNG", pnginfo=info)
    elif fmt in ("jpeg", "webp"):
        exif = Image.Exif()
        exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + parameters.encode("utf-16-be")
        image.save(
            buffer,
            format=fmt.upper(),
            quality=92 if quality is None else quality,
            exif=exif.tobytes(),
        )
    else:
        raise ValueError(f"unsupported output format {fmt!r}")
    return buffer.getvalue()


def read_parameters(image: Image.Image) -> str | None:
    """The A1111 parameters text stored in an opened image, if any."""
    text = image.info.get("parameters")
    if isinstance(text, str):
        return text
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    if isinstance(comment, bytes):
        if comment.startswith(_UNICODE_PREFIX):
            # UTF-16 big-endian, as piexif writes it and A1111 reads it back.
            return comment[len(_UNICODE_PREFIX) :].decode("utf-16-be", errors="replace")
        if comment.startswith(b"ASCII\x00\x00\x00"):
            return comment[8:].decode("ascii", errors="replace")
    return None
