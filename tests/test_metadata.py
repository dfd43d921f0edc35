"""Generation parameters in output files, readable the way A1111 and other SD tools read them."""

import io

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from PIL import Image

from helpers import REF
from huabu.catalog.infotext import encode_image, infotext, parse_infotext, read_parameters
from huabu.native import GenerationRequest


def make_request(**changes):
    base = dict(
        model="demo",
        prompt="a (red:1.3) fox,\nin snow",
        negative_prompt="blurry, ugly",
        width=512,
        height=768,
        steps=25,
        guidance=7.5,
        sampler="DPM++ 2M Karras",
        seed=42,
    )
    return GenerationRequest(**(base | changes))


def test_infotext_is_in_a1111_format():
    text = infotext(make_request(), 42, model_hash="abc1234567")
    assert text == (
        "a (red:1.3) fox,\nin snow\n"
        "Negative prompt: blurry, ugly\n"
        "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 42, Size: 512x768, "
        "Model hash: abc1234567, Model: demo"
    )


def test_infotext_parses_back():
    parsed = parse_infotext(infotext(make_request(init_image=REF, strength=0.5, clip_skip=2), 43))
    assert parsed["Prompt"] == "a (red:1.3) fox,\nin snow"
    assert parsed["Negative prompt"] == "blurry, ugly"
    assert parsed["Steps"] == "25" and parsed["Sampler"] == "DPM++ 2M Karras"
    assert parsed["CFG scale"] == "7.5" and parsed["Seed"] == "43"
    assert parsed["Size"] == "512x768" and parsed["Model"] == "demo"
    assert parsed["Denoising strength"] == "0.5" and parsed["Clip skip"] == "2"


def test_values_with_commas_are_quoted():
    parsed = parse_infotext(infotext(make_request(model="my, model"), 1))
    assert parsed["Model"] == "my, model"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_parameters_round_trip_through_files(fmt):
    text = infotext(make_request(prompt="一只红狐狸 (fox:1.2)"), 42)
    data = encode_image(Image.new("RGB", (64, 48), "red"), fmt, text)
    opened = Image.open(io.BytesIO(data))
    assert opened.format == fmt.upper()
    assert opened.size == (64, 48)
    assert read_parameters(opened) == text


def test_png_uses_the_parameters_text_chunk():
    data = encode_image(Image.new("RGB", (8, 8)), "png", "hello\nSteps: 1, Sampler: Euler, Seed: 1")
    assert Image.open(io.BytesIO(data)).text["parameters"].startswith("hello")


# -- the parser A1111's PNG Info uses (and /sdapi/v1/png-info serves), as properties ----------

_LINE = (
    st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)
    .map(str.strip)
    .filter(lambda line: not line.startswith("Negative prompt:"))
)
#: Prompts as A1111's format can carry them: lines are stripped, and a prompt does not start
#: with an empty line (the text as a whole is stripped).
_PROMPT = st.lists(_LINE, max_size=4).map("\n".join).filter(lambda p: not p.startswith("\n"))
_NAME = st.text(
    st.characters(exclude_categories=("Cs", "Cc"), include_characters=',"\\:\n'), min_size=1,
    max_size=30,
).map(str.strip).filter(bool)  # fmt: skip


@hypothesis_settings(max_examples=300, deadline=None)
@given(prompt=_PROMPT, negative=_PROMPT, model=_NAME, vae=_NAME)
def test_infotext_round_trips(prompt, negative, model, vae):
    text = infotext(make_request(prompt=prompt, negative_prompt=negative, model=model, vae=vae), 7)
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Model"] == model and parsed["VAE"] == vae
    assert parsed["Seed"] == "7" and parsed["Steps"] == "25" and parsed["Size"] == "512x768"


@pytest.mark.parametrize(
    "text, expected",
    [
        # No parameters line: all of it is prompt (a colon is not a parameter).
        ("a prompt with: colon", {"Prompt": "a prompt with: colon", "Negative prompt": ""}),
        (
            'a fox\nSteps: 20, Sampler: Euler, VAE: "C:\\\\vae, v2"',
            {
                "Prompt": "a fox",
                "Negative prompt": "",
                "Steps": "20",
                "Sampler": "Euler",
                "VAE": "C:\\vae, v2",
            },
        ),
        (
            'x\nNegative prompt: y\nz\nSteps: 1, Seed: 2, Lora hashes: "a: 1, b: 2"',
            {
                "Prompt": "x",
                "Negative prompt": "y\nz",
                "Steps": "1",
                "Seed": "2",
                "Lora hashes": "a: 1, b: 2",
            },
        ),
    ],
)
def test_parser_reads_what_a1111_writes(text, expected):
    assert parse_infotext(text) == expected
