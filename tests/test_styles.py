"""Prompt styles from ``styles.csv`` (A1111's format), in the A1111 dialect through webuiapi,
the native API, and the engine."""

from __future__ import annotations

import httpx
import pytest
import webuiapi

from huabu.catalog.styles import apply_styles, merge, read_styles
from huabu.errors import InvalidRequest
from huabu.settings import Settings

SMALL = {"steps": 4, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


@pytest.mark.parametrize(
    ("style", "prompt", "expected"),
    [
        ("oil painting of {prompt}, thick", "a fox", "oil painting of a fox, thick"),
        ("masterpiece, best quality", "a fox ", "a fox, masterpiece, best quality"),
        ("masterpiece", "", "masterpiece"),
        ("", "a fox", "a fox"),
    ],
)
def test_a_style_takes_the_prompt_at_its_placeholder_or_after_a_comma(style, prompt, expected):
    assert merge(style, prompt) == expected


def test_styles_apply_in_order_and_an_unknown_one_is_named(tmp_path, small):
    settings = Settings(home=tmp_path)
    assert read_styles(settings) == {}
    (tmp_path / "styles.csv").write_text(
        "name,text,negative_prompt\nfirst,{prompt} in oil,blurry\nsecond,at dusk,\n",
        encoding="utf-8-sig",  # A1111's older column name, and a byte-order mark
    )
    styled = apply_styles(small(prompt="a fox", styles=("first", "second")), settings)
    assert styled.prompt == "a fox in oil, at dusk"
    assert styled.negative_prompt == "blurry, blurry"  # the request's "blurry", then the style's
    assert styled.styles == ()
    with pytest.raises(InvalidRequest) as unknown:
        apply_styles(small(styles=("third",)), settings)
    assert unknown.value.param == "styles"
    assert "first, second" in str(unknown.value)
    # The file is read again when it changes.
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nthird,x,\n")
    assert list(read_styles(settings)) == ["third"]


def test_a1111_lists_and_applies_styles(server, accounts, styles):
    accounts.add_user("styles@example.com", "password123")
    api = webuiapi.WebUIApi(
        baseurl=server.url + "/sdapi/v1", username="styles@example.com", password="password123"
    )
    listed = api.get_prompt_styles()
    assert [s["name"] for s in listed] == ["oil painting", "tagged", "moody, dark"]
    assert listed[0] == {
        "name": "oil painting",
        "prompt": "oil painting of {prompt}, thick brush strokes",
        "negative_prompt": "blurry",
    }
    result = api.txt2img(prompt="a fox", styles=["oil painting", "tagged", "moody, dark"], **SMALL)
    info = result.info["infotexts"][0]
    # Applied in order; a style's LoRA tag counts as the prompt's own would (and leaves its
    # commas behind, as in A1111).
    assert info.startswith("oil painting of a fox, thick brush strokes, , dark, moody light\n")
    assert "Negative prompt: bright, blurry\n" in info
    assert "LoRAs: demo-lora:0.5" in info
    answer = httpx.post(
        server.url + "/sdapi/v1/txt2img",
        json={"prompt": "a fox", "styles": ["nope"], **SMALL},
        auth=("styles@example.com", "password123"),
    )
    assert answer.status_code == 400
    assert answer.json()["param"] == "styles"
    assert "oil painting" in answer.json()["detail"]


def test_native_requests_take_styles(server, accounts, styles):
    user = accounts.add_user("styles-native@example.com", "password123")
    key = accounts.create_key(user.id)
    headers = {"Authorization": f"Bearer {key}"}
    listed = httpx.get(server.url + "/huabu/v1/styles", headers=headers).json()
    assert [s["name"] for s in listed] == ["oil painting", "tagged", "moody, dark"]
    body = {"model": "demo", "prompt": "a fox", "width": 64, "height": 64, "steps": 4}
    task = httpx.post(
        server.url + "/huabu/v1/generations",
        json=body | {"styles": ["oil painting"]},
        headers=headers,
    ).json()
    assert task["request"]["prompt"] == "oil painting of a fox, thick brush strokes"
    assert task["request"]["negative_prompt"] == "blurry"
    refused = httpx.post(
        server.url + "/huabu/v1/generations", json=body | {"styles": ["nope"]}, headers=headers
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "styles"
