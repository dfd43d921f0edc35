"""The OpenAI images API, driven by the real `openai` SDK from PyPI with
base_url=http://HOST:PORT/v1 against a running huabu."""

from __future__ import annotations

import base64
import io

import openai
import pytest
import requests
from PIL import Image

from helpers import max_difference, png_bytes


@pytest.fixture(scope="module")
def client(server, accounts):
    user = accounts.add_user("openai-user@example.com", "password123")
    key = accounts.create_key(user.id)
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def png(colour=(200, 30, 30), size=(72, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_generate_as_urls(client):
    result = client.images.generate(model="dall-e-3", prompt="a red fox", n=2, size="64x64")
    assert len(result.data) == 2 and result.created > 0 and result.size == "64x64"
    for item in result.data:
        image = Image.open(io.BytesIO(requests.get(item.url).content))
        assert image.size == (64, 64) and image.format == "PNG"


def test_generate_as_base64_in_another_format(client):
    result = client.images.generate(
        model="demo-single",
        prompt="a red fox",
        size="64x64",
        response_format="b64_json",
        output_format="jpeg",
        quality="low",
        style="vivid",
    )
    (item,) = result.data
    assert item.url is None
    image = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
    assert image.size == (64, 64) and image.format == "JPEG"
    assert result.output_format == "jpeg"


def test_auto_size_is_the_models_own(client):
    """size "auto" is the model's trained square: the tiny SDXL demo's is 512 (SDXL's 1024
    scaled down, as the demo is), read from its config."""
    result = client.images.generate(
        model="demo-xl", prompt="a red fox", quality="low", response_format="b64_json"
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (512, 512) and result.size == "512x512"


def test_edit_is_image_to_image(client):
    result = client.images.edit(
        image=("fox.png", png(), "image/png"), prompt="a fox", response_format="b64_json"
    )
    image = Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json)))
    assert image.size == (72, 64)  # the source's size by default
    other = client.images.edit(
        image=("fox.png", png((20, 20, 220)), "image/png"),
        prompt="a fox",
        response_format="b64_json",
    )
    blue = Image.open(io.BytesIO(base64.b64decode(other.data[0].b64_json)))
    assert max_difference(image, blue) > 0  # it started from the image it was sent


def test_edit_with_a_mask_repaints_only_its_transparent_area(client):
    source = Image.effect_noise((64, 64), 80).convert("RGB")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent: edit here

    def edited(**files):
        result = client.images.edit(prompt="a fox", response_format="b64_json", **files)
        return Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).convert("RGB")

    def kept(image, box):
        return max_difference(image.crop(box), source.crop(box))

    masked = edited(
        image=("fox.png", png_bytes(source), "image/png"),
        mask=("mask.png", png_bytes(mask), "image/png"),
    )
    # The mask's edge is blurred by 4 px (a Gaussian reaching about 12 px): beyond it, the
    # source's own pixels.
    assert kept(masked, (46, 0, 64, 64)) == 0 and kept(masked, (0, 0, 24, 64)) > 32
    # No mask, but transparency in the image itself: that is the mask (as DALL·E 2 does).
    cutout = source.convert("RGBA")
    cutout.putalpha(mask.getchannel("A"))
    transparent = edited(image=("fox.png", png_bytes(cutout), "image/png"))
    assert kept(transparent, (46, 0, 64, 64)) == 0 and kept(transparent, (0, 0, 24, 64)) > 32
    with pytest.raises(openai.BadRequestError) as caught:
        edited(
            image=("fox.png", png_bytes(source), "image/png"),
            mask=("mask.png", png_bytes(mask.resize((32, 32))), "image/png"),
        )
    assert caught.value.body["param"] == "mask" and "size" in caught.value.body["message"]


def test_variation(client):
    result = client.images.create_variation(
        image=("fox.png", png(), "image/png"), n=1, size="64x64"
    )
    assert Image.open(io.BytesIO(requests.get(result.data[0].url).content)).size == (64, 64)


def test_models_list(client):
    ids = [model.id for model in client.models.list()]
    assert {"demo", "demo-single"} <= set(ids)
    assert client.models.retrieve("demo").owned_by == "huabu"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_errors_arrive_as_the_sdks_exceptions(client, server):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", size="100x100")
    assert caught.value.body["param"] == "size" and caught.value.body["type"] == (
        "invalid_request_error"
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", size="huge")
    assert caught.value.body["param"] == "size"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", model="nope", size="64x64")
    assert caught.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=("fox.png", png(), "image/png"),
            prompt="a fox",
            mask=("mask.png", png(), "image/png"),
        )
    assert caught.value.body["param"] == "mask"
    stranger = openai.OpenAI(base_url=server.url + "/v1", api_key="hb_nope_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        stranger.models.list()
    assert caught.value.body["code"] == "invalid_api_key"


def test_todays_gpt_image_parameters(client):
    """What today's SDK sends for GPT-image models: such a request is answered in b64_json
    (all the SDK reads for them), with usage; output_compression sets the jpeg/webp quality;
    background opaque/auto, moderation, user, style are accepted."""
    common = {"prompt": "a red fox", "size": "64x64", "quality": "low"}
    compressed = client.images.generate(
        **common, output_format="jpeg", output_compression=10, background="opaque"
    )
    (item,) = compressed.data
    assert item.url is None and item.b64_json  # b64_json without asking
    small = base64.b64decode(item.b64_json)
    fine = base64.b64decode(
        client.images.generate(**common, output_format="jpeg", output_compression=100)
        .data[0]
        .b64_json
    )
    assert Image.open(io.BytesIO(small)).format == "JPEG"
    assert len(small) < len(fine)  # more compression, fewer bytes
    assert compressed.background == "opaque"
    assert compressed.usage.input_tokens == 3 and compressed.usage.output_tokens == 0
    named = client.images.generate(
        **common, model="gpt-image-1", moderation="low", user="u-1", background="auto"
    )
    assert named.data[0].b64_json
    assert client.images.generate(**common, model="dall-e-2").data[0].url  # urls by default


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"background": "transparent"}, "background"),
        ({"output_compression": 50}, "output_compression"),  # png
        ({"partial_images": 2}, "partial_images"),
        ({"extra_body": {"frame_count": 4}}, "frame_count"),
        ({"extra_body": {"no_such_field": 1}}, "no_such_field"),
    ],
)
def test_what_huabu_cannot_give_is_refused_by_name(client, changes, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", size="64x64", **changes)
    assert caught.value.body["param"] == param


def test_an_edit_of_several_images_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(
            image=[("a.png", png(), "image/png"), ("b.png", png((0, 0, 200)), "image/png")],
            prompt="a fox",
            size="64x64",
        )
    assert caught.value.body["param"] == "image"


def test_streamed_partial_images(client):
    """stream with partial_images: that many of huabu's live previews, kept at steps spread
    over the task's (quality low: 12 steps, so steps 4 and 8), then the image, as the SDK's
    stream iterator reads them."""
    events = list(
        client.images.generate(
            prompt="a red fox", size="64x64", quality="low", stream=True, partial_images=2
        )
    )
    partial = [e for e in events if e.type == "image_generation.partial_image"]
    completed = [e for e in events if e.type == "image_generation.completed"]
    assert [e.partial_image_index for e in partial] == [0, 1]
    assert len(completed) == 1 and len(events) == 3
    images = [Image.open(io.BytesIO(base64.b64decode(e.b64_json))) for e in partial + completed]
    assert [image.size for image in images] == [(64, 64)] * 3
    assert max_difference(images[0], images[1]) > 0 and max_difference(images[1], images[2]) > 0
    assert completed[0].usage.input_tokens == 3 and completed[0].size == "64x64"


def test_a_streamed_edit(client):
    events = list(
        client.images.edit(
            image=("fox.png", png(), "image/png"),
            prompt="a fox",
            size="64x64",
            quality="low",
            stream=True,
            partial_images=1,
        )
    )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]


def test_the_json_form_of_edits(client, server):
    """Today's API also takes an edit as JSON, the image by link (fetched through the
    SSRF-safe fetcher: an allow-listed host here) or data URL."""
    import http.server
    import threading

    fox = png()

    class Host(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(fox)))
            self.end_headers()
            self.wfile.write(fox)

        def log_message(self, *args):
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Host)  # allow-listed
    threading.Thread(target=host.serve_forever, daemon=True).start()
    link = f"http://127.0.0.2:{host.server_address[1]}/fox.png"
    data_url = "data:image/png;base64," + base64.b64encode(fox).decode()
    headers = {"Authorization": f"Bearer {client.api_key}"}
    try:
        for url in (link, data_url):
            answer = requests.post(
                server.url + "/v1/images/edits",
                json={"prompt": "a fox", "images": [{"image_url": url}], "quality": "low"},
                headers=headers,
            )
            assert answer.status_code == 200, answer.text
            image = Image.open(io.BytesIO(requests.get(answer.json()["data"][0]["url"]).content))
            assert image.size == (72, 64)  # the input's size
        refused = requests.post(
            server.url + "/v1/images/edits",
            json={"prompt": "a fox", "images": [{"file_id": "file-1"}]},
            headers=headers,
        )
        assert refused.status_code == 400
        assert refused.json()["error"]["param"] == "images.0"
        private = requests.post(
            server.url + "/v1/images/edits",
            json={"prompt": "a fox", "images": [{"image_url": "http://127.0.0.1:1/x.png"}]},
            headers=headers,
        )
        assert private.status_code == 400
        assert private.json()["error"]["param"] == "images.0.image_url"
    finally:
        host.shutdown()
