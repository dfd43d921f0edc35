"""Properties of the parsers that read what clients send: prompt syntax, LoRA tags, URLs, the
address filter, base64, image decoding and the dialects' translations. Each holds for every
input hypothesis can make: a parser either understands its input or refuses it with a 400
naming the field, and never fails any other way."""

from __future__ import annotations

import base64
import io
import ipaddress
import math
import struct
import zlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError

from huabu.dialects import a1111, kamiya, novita, sdserver, v1b
from huabu.dialects.a1111 import split_loras
from huabu.errors import InvalidRequest
from huabu.fetch import _parts, allowed
from huabu.images import decode_base64, decode_image, open_image
from huabu.native import SAMPLER_NAMES
from huabu.native.prompt_syntax import ROUND_UP, parse_weights
from huabu.settings import Settings

SYNTAX = "()[]\\:"
#: Text with no prompt syntax at all (and no BREAK keyword).
plain = st.text(
    st.characters(blacklist_characters=SYNTAX, blacklist_categories=("Cs",)), max_size=40
).filter(lambda text: "BREAK" not in text)
MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- prompt syntax ----------------------------------------------------------------------------


@MANY
@given(st.text(max_size=200))
def test_any_prompt_parses_into_runs_with_sane_weights(prompt):
    runs = parse_weights(prompt)
    assert runs
    for text, weight in runs:
        if text == "BREAK" and weight == -1.0:
            continue
        assert math.isfinite(weight) and weight >= 0


@MANY
@given(plain)
def test_plain_text_is_one_run_at_weight_one(text):
    assert parse_weights(text) == [(text, 1.0)]


@MANY
@given(st.text(max_size=60).filter(lambda text: "BREAK" not in text))
def test_escaped_syntax_is_literal_text(text):
    escaped = "".join("\\" + c if c in "()[]\\" else c for c in text)
    runs = parse_weights(escaped)
    assert "".join(t for t, _ in runs) == text
    assert {w for _, w in runs} <= {1.0}


@MANY
@given(plain.filter(str.strip), st.floats(0, 10, allow_nan=False).map(lambda w: round(w, 3)))
def test_an_explicit_weight_is_the_runs_weight(text, weight):
    assume(not text.rstrip().endswith(" "))
    assert parse_weights(f"({text}:{weight})") == [(text, pytest.approx(weight))]


@MANY
@given(plain.filter(str.strip), st.integers(1, 6), st.booleans())
def test_each_bracket_multiplies_or_divides_by_1_1(text, depth, round_):
    opener, closer = ("(", ")") if round_ else ("[", "]")
    [(parsed, weight)] = parse_weights(opener * depth + text + closer * depth)
    assert parsed == text
    assert weight == pytest.approx(ROUND_UP ** (depth if round_ else -depth))


# -- LoRA tags --------------------------------------------------------------------------------

lora_names = st.text(
    st.characters(whitelist_categories=("L", "N"), whitelist_characters="-_. "),
    min_size=1,
    max_size=30,
).filter(str.strip)


@MANY
@given(plain, lora_names, st.floats(-4, 4, allow_nan=False), plain)
def test_lora_tags_are_taken_out_of_the_prompt(before, name, weight, after):
    prompt, loras = split_loras(f"{before}<lora:{name}:{weight}>{after}")
    assert "<lora:" not in prompt
    assert [(lora.name, lora.weight) for lora in loras] == [(name.strip(), pytest.approx(weight))]


@MANY
@given(st.text(max_size=120))
def test_any_prompt_with_tags_splits_or_names_the_prompt(prompt):
    try:
        split_loras("<lora:" + prompt + ">" + prompt)
    except InvalidRequest as exc:
        assert exc.param == "prompt"


# -- URLs and addresses -----------------------------------------------------------------------


@MANY
@given(
    st.text(max_size=100)
    | st.builds(
        "http://{}:{}/{}".format, st.text(max_size=20), st.text(max_size=8), st.text(max_size=10)
    )
)
def test_any_url_is_parsed_or_refused_naming_the_field(url):
    try:
        _parts(url, "init_img")
    except InvalidRequest as exc:
        assert exc.param == "init_img" and exc.message.startswith("init_img: ")


ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)


def _ipv6_forms(address: ipaddress.IPv4Address) -> list[ipaddress.IPv6Address]:
    """Every IPv6 spelling that reaches ``address``: IPv4-mapped, NAT64 (well-known and local
    prefixes), 6to4 and IPv4-compatible."""
    value = int(address)
    return [
        ipaddress.IPv6Address(f"::ffff:{address}"),
        ipaddress.IPv6Address((0x64FF9B << 96) | value),
        ipaddress.IPv6Address((0x64FF9B0001 << 80) | value),
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),
        ipaddress.IPv6Address(value),
    ]


@MANY
@given(ipv4)
def test_no_ipv6_spelling_reaches_a_private_ipv4_address(address):
    assume(not (address.is_global and not address.is_multicast))
    assert not allowed(address, [])
    for form in _ipv6_forms(address):
        assert not allowed(form, []), form


@MANY
@given(st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))
def test_only_global_unicast_ipv6_is_allowed(address):
    if allowed(address, []):
        assert address.is_global and not address.is_multicast


# -- base64 and images ------------------------------------------------------------------------


@MANY
@given(st.binary(min_size=1, max_size=300), st.booleans(), st.integers(1, 80))
def test_base64_round_trips_bare_or_as_a_data_url(data, as_url, line):
    text = base64.b64encode(data).decode()
    text = "\n".join(text[i : i + line] for i in range(0, len(text), line))
    if as_url:
        text = "data:image/png;base64," + text
    assert decode_base64(text, field="image") == data


@MANY
@given(st.text(max_size=200))
def test_any_text_is_base64_or_refused_naming_the_field(text):
    try:
        decode_base64(text, field="image_base64")
    except InvalidRequest as exc:
        assert exc.param == "image_base64"


def _image(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {fmt: _image(fmt, (48, 40)) for fmt in ("PNG", "JPEG", "WEBP")}


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(IMAGES)), st.data())
def test_a_damaged_image_decodes_whole_or_is_refused(fmt, data):
    whole = IMAGES[fmt]
    cut = data.draw(st.integers(0, len(whole)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(whole) - 1), st.integers(0, 255)), max_size=4)
    )
    damaged = bytearray(whole[:cut])
    for index, value in flips:
        if index < len(damaged):
            damaged[index] = value
    try:
        image = decode_image(bytes(damaged), field="image", max_pixels=10_000)
    except InvalidRequest as exc:
        assert exc.param == "image"
    else:
        assert image.mode == "RGB" and image.width * image.height <= 10_000


def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@MANY
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_declared_sizes_over_the_cap_are_refused_unread(width, height):
    try:
        image = open_image(_png_declaring(width, height), field="image", max_pixels=4_000_000)
    except InvalidRequest as exc:
        assert exc.param == "image"
    else:
        assert width * height <= 4_000_000 and image.size == (width, height)


# -- the dialects' translations ---------------------------------------------------------------

SETTINGS = Settings(home="/nonexistent")
numbers = st.one_of(
    st.sampled_from([-1, 0, 1, 4, 8, 64, 100, 512, 1024, 2048, 2049, 4096]),
    st.integers(1, 1100),
    st.floats(0, 35),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
)
samplers = st.sampled_from(SAMPLER_NAMES) | st.text(max_size=12)
words = st.text(max_size=30)


def _translate(dialect: str, fields: dict):
    """The dialect's wire body as its router validates it, then its pure translation."""
    if dialect == "novita":
        body = novita.Txt2ImgIn.model_validate({"prompt": "p", "model_name": "demo"} | fields)
        return novita.to_native(body, novita.ExtraIn())
    if dialect == "kamiya":
        return kamiya.to_native(
            kamiya.GenerateIn.model_validate(fields), model="demo", init_image=None
        )
    if dialect == "v1b":
        body = v1b.SubmitIn.model_validate(fields | {"model_name": "demo"})
        return v1b.to_native(body, init_image=None, settings=SETTINGS)
    if dialect == "sdserver":
        form = sdserver.Txt2ImgForm.model_validate(fields)
        return sdserver.to_native(form, model="demo", size=(form.width, form.height))
    body = a1111.Txt2ImgIn.model_validate(fields)
    return a1111.to_native(
        body, model="demo", init_image=None, controlnets=[], options={}, settings=SETTINGS
    )


#: Each dialect's size, steps, guidance, count, seed, sampler and prompt fields.
WIRE = {
    "novita": ("width", "height", "steps", "guidance_scale", "image_num", "seed", "sampler_name",
               "prompt"),
    "kamiya": ("width", "height", "step", "cfg", None, "seed", "sampling", "prompts"),
    "v1b": (None, None, None, "scale", "n_images", "select_seed", None, "prompt"),
    "sdserver": ("width", "height", "num_inference_steps", "guidance_scale", "num_outputs",
                 "seed", None, "prompt"),
    "a1111": ("width", "height", "steps", "cfg_scale", "batch_size", "seed", "sampler_name",
              "prompt"),
}  # fmt: skip
NATIVE = ("width", "height", "steps", "guidance", "n_images", "seed", "sampler", "prompt")


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(sorted(WIRE)), st.data())
def test_a_translation_keeps_the_values_or_names_the_field(dialect, data):
    values = {}
    for wire, native in zip(WIRE[dialect], NATIVE, strict=True):
        if wire is not None and data.draw(st.booleans()):
            strategy = {"sampler": samplers, "prompt": words}.get(native, numbers)
            values[wire] = data.draw(strategy, label=wire)
    try:
        request = _translate(dialect, values)
    except ValidationError:
        return  # the wire schema refused it: a 400 from validate(), tested elsewhere
    except InvalidRequest as exc:
        assert exc.param, exc.message
        return
    for native, wire in zip(NATIVE, WIRE[dialect], strict=True):
        if wire not in values or native in ("prompt", "sampler"):
            continue
        if native != "seed" or values[wire] != -1:  # -1: a random seed, fixed at submit
            assert getattr(request, native) == pytest.approx(values[wire]), wire
