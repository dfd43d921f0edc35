"""Bad input: a clear error naming the field and the limit, never a traceback."""

import io

import pytest
from PIL import Image

from helpers import png_bytes
from huabu.errors import InvalidRequest, ModelUnavailable
from huabu.images import decode_image
from huabu.native import GenerationRequest


def check(settings, **fields):
    base = dict(model="demo", prompt="fox")
    return GenerationRequest.parse(base | fields).checked(settings)


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 4104}, "height", "between 64 and 2048"),
        ({"width": 32}, "width", "between 64 and 2048"),
        ({"steps": 0}, "steps", "greater than or equal to 1"),
        ({"steps": 151}, "steps", "between 1 and 150"),
        ({"guidance": 31}, "guidance", "less than or equal to 30"),
        ({"guidance": -1}, "guidance", "greater than or equal to 0"),
        ({"strength": 0}, "strength", "greater than 0"),
        ({"strength": 1.5}, "strength", "less than or equal to 1"),
        ({"n_images": 9}, "n_images", "between 1 and 8"),
        ({"seed": -2}, "seed", "greater than or equal to -1"),
        ({"sampler": "Euler b"}, "sampler", "DPM++ 2M Karras"),
        ({"output_format": "gif"}, "output_format", "png"),
        ({"clip_skip": 13}, "clip_skip", "12"),
        ({"bogus": 1}, "bogus", "is not a known field"),
        # Image-to-image that would run no step at all (it failed on the worker before).
        (
            {"init_image": "00000000-0000-0000-0000-000000000001", "steps": 1, "strength": 0.75},
            "strength",
            "steps × strength must be at least 1",
        ),
        (
            {"hires": {"strength": 0.04}, "steps": 20},
            "hires.strength",
            "steps × strength must be at least 1",
        ),
    ],
)
def test_out_of_range_fields_are_named(settings, fields, param, fragment):
    with pytest.raises(InvalidRequest) as caught:
        check(settings, **fields)
    assert caught.value.param == param
    assert fragment in caught.value.message


def test_pixel_budget_is_enforced(settings):
    tight = settings.model_copy(update={"max_pixels": 512 * 512})
    with pytest.raises(InvalidRequest, match="at most 262144 pixels"):
        check(tight, width=1024, height=512)


def test_unknown_model_lists_the_available_ones(engine, small):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(small(model="sdxl-turbo"))
    assert caught.value.param == "model"
    assert "available: demo, demo-flux, " in caught.value.message
    assert "demo-single" in caught.value.message


def test_unknown_vae_is_named(engine, small):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(small(vae="nope"))
    assert caught.value.param == "vae"


def test_init_image_that_is_not_an_image():
    with pytest.raises(InvalidRequest, match="init_image is not a readable image"):
        decode_image(b"%PDF-1.4 definitely not a picture", field="init_image", max_pixels=10**6)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = png_bytes(Image.new("1", (8000, 8000)))  # tiny file, 64 megapixels
    assert len(bomb) < 100_000
    with pytest.raises(InvalidRequest) as caught:
        decode_image(bomb, field="init_image", max_pixels=4096 * 4096)
    assert caught.value.param == "init_image"
    assert "8000×8000" in caught.value.message and "16777216" in caught.value.message


def test_truncated_image_is_refused():
    data = png_bytes(Image.new("RGB", (64, 64), "blue"))[:-40]
    with pytest.raises(InvalidRequest, match="truncated or corrupt"):
        decode_image(data, field="init_image", max_pixels=10**6)


def test_decoded_image_is_rgb_and_upright():
    buffer = io.BytesIO()
    image = Image.new("RGBA", (40, 20), (255, 0, 0, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    image.convert("RGB").save(buffer, format="JPEG", exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue(), field="f", max_pixels=10**6)
    assert decoded.mode == "RGB" and decoded.size == (20, 40)


def test_pickled_checkpoints_are_refused_unless_allowed(settings, engine, small):
    path = settings.models_dir / "checkpoints" / "old-model.ckpt"
    path.write_bytes(b"\x80\x04not really a pickle")
    try:
        with pytest.raises(ModelUnavailable, match="HUABU_ALLOW_PICKLE"):
            engine.generate(small(model="old-model"))
    finally:
        path.unlink()


def test_a_safetensors_file_that_is_not_sd_is_refused(settings, engine, small):
    import torch
    from safetensors.torch import save_file

    path = settings.models_dir / "checkpoints" / "not-sd.safetensors"
    save_file({"some.weight": torch.zeros(2)}, str(path))
    try:
        with pytest.raises(ModelUnavailable, match="not a Stable Diffusion"):
            engine.generate(small(model="not-sd"))
    finally:
        path.unlink()
