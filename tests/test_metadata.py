"""Generation parameters in output files, readable the way A1111 and other SD tools read them."""

import io

import pytest
from PIL import Image

from huabu.engine.metadata import encode_image, infotext, parse_infotext, read_parameters
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
    parsed = parse_infotext(infotext(make_request(init_image="k", strength=0.5, clip_skip=2), 43))
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
