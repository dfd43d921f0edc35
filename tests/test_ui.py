"""The web page at / (issue 18), in a real browser: Debian's chromium driven by
Playwright for Python (its own browser download cannot work offline). Each test saves a
screenshot under test-artifacts/ui/; any JavaScript error fails it."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from test_service import SLOW, client_for, submit, wait_state

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    # JavaScript errors and console.error calls. Chromium also logs each non-2xx answer as
    # "Failed to load resource": an API refusal the page shows is not a script error.
    page.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], errors


def log_in(page, server, accounts, email: str):
    client_for(accounts, server, email)  # the account (password123)
    page.goto(server.url + "/")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill("password123")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Generate").wait_for()


def test_log_in_generate_watch_and_see_it_in_the_gallery(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-ada@example.com")
    page.get_by_label("Prompt", exact=True).fill("a red fox in the snow")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("24")
    page.get_by_label("Seed", exact=True).fill("42")
    page.get_by_label("Sampler").select_option("Euler")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_contain_text("Step", timeout=60_000)  # while it runs
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    image = card.get_by_role("img", name="Image 1, seed 42")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.naturalWidth") == 64
    # It opens large, with its parameters.
    image.click()
    viewer = page.get_by_role("dialog", name="Image 1, seed 42")
    expect(viewer).to_be_visible()
    expect(viewer.locator("pre")).to_contain_text("Seed: 42")
    viewer.get_by_role("button", name="Close").click()
    expect(viewer).to_be_hidden()
    # "Random", then "Reuse last seed".
    page.get_by_role("button", name="Random").click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value("-1")
    page.get_by_role("button", name="Reuse last seed").click()
    expect(page.get_by_label("Seed", exact=True)).to_have_value("42")

    page.get_by_role("link", name="Gallery").click()
    listed = page.locator("#gallery .task").first
    expect(listed.get_by_role("img", name="Image 1, seed 42")).to_be_visible()
    expect(listed).to_contain_text("a red fox in the snow")


def test_errors_show_next_to_their_field(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-bob@example.com")
    page.get_by_label("Prompt", exact=True).fill("a fox")
    page.get_by_label("Width", exact=True).fill("60")  # not a multiple of 8
    page.get_by_role("button", name="Generate").click()
    message = page.locator('.error[data-for="width"]')
    message.wait_for()
    assert "width" in message.inner_text() and "8" in message.inner_text()
    # A file that is not an image is refused before anything is sent.
    page.get_by_text("Image to image and inpainting").click()
    page.get_by_label("Source image", exact=True).set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture"}
    )
    refused = page.locator('.error[data-for="init_image"]')
    expect(refused).to_contain_text("Not an image: notes.txt")
    assert page.locator(".task").count() == 0  # nothing was queued


def test_cancel_says_so_in_words(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-cy@example.com")
    # Keep the worker busy so that the page's task is caught queued.
    other = client_for(accounts, server, "ui-blocker@example.com")
    blocker = submit(other, SLOW)
    wait_state(other, blocker["id"], "running")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_contain_text("Queued", timeout=30_000)
    card.get_by_role("button", name="Cancel").click()
    expect(card.get_by_role("status")).to_have_text("Cancelled", timeout=30_000)
    other.post(f"/huabu/v1/tasks/{blocker['id']}/cancel")


def test_a_wrong_password_is_refused_in_words(page, server, accounts):
    client_for(accounts, server, "ui-dee@example.com")
    page.goto(server.url + "/")
    page.get_by_label("Email", exact=True).fill("ui-dee@example.com")
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Log in").click()
    alert = page.locator("#login-error")
    alert.wait_for()
    assert "wrong email or password" in alert.inner_text()


def test_create_and_revoke_a_key(page, server, accounts):
    import httpx
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-keys@example.com")
    page.get_by_role("link", name="API keys").click()
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#key-value")
    expect(shown).to_contain_text("hb_")
    key = shown.inner_text().strip()
    assert (
        httpx.get(
            server.url + "/huabu/v1/me", headers={"Authorization": f"Bearer {key}"}
        ).status_code
        == 200
    )
    prefix = key[:15]
    row = page.locator("#key-table tbody tr", has_text=prefix)
    expect(row).to_be_visible()
    row.get_by_role("button", name=f"Revoke {prefix}").click()
    expect(row).to_contain_text("Revoked")
    # Servers cache a key for up to 5 s: a revoked one is refused after that.
    deadline = time.monotonic() + 10
    while (
        httpx.get(
            server.url + "/huabu/v1/me", headers={"Authorization": f"Bearer {key}"}
        ).status_code
        != 401
    ):
        assert time.monotonic() < deadline, "the revoked key still works"
        time.sleep(0.5)


def test_the_chinese_page_is_remembered(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-zh@example.com")
    page.get_by_label("Language").select_option("zh")
    expect(page.get_by_role("button", name="生成")).to_be_visible()
    expect(page.get_by_role("link", name="作品")).to_be_visible()
    page.reload()
    page.get_by_label("提示词", exact=True).fill("一只红狐狸")
    page.get_by_label("宽度", exact=True).fill("64")
    page.get_by_label("高度", exact=True).fill("64")
    page.get_by_label("步数", exact=True).fill("4")
    page.get_by_role("button", name="生成").click()
    expect(page.locator(".task").first.get_by_role("status")).to_have_text("完成", timeout=60_000)
    assert page.evaluate("document.documentElement.lang") == "zh-CN"


def test_a_phone_sized_screen(browser, server, accounts, request):
    from playwright.sync_api import expect

    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    phone = context.new_page()
    errors: list[str] = []
    phone.on("pageerror", lambda e: errors.append(str(e)))
    try:
        log_in(phone, server, accounts, "ui-phone@example.com")
        phone.get_by_label("Prompt", exact=True).fill("a small fox")
        phone.get_by_label("Width", exact=True).fill("64")
        phone.get_by_label("Height", exact=True).fill("64")
        phone.get_by_label("Steps", exact=True).fill("4")
        phone.get_by_role("button", name="Generate").click()
        expect(phone.locator(".task").first.get_by_role("status")).to_have_text(
            "Done", timeout=60_000
        )
        # Nothing wider than the screen: no sideways scrolling.
        assert phone.evaluate("document.documentElement.scrollWidth") <= 390
        for name in ("Generate", "Gallery", "API keys"):
            assert phone.get_by_role("link", name=name).is_visible()
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        phone.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        context.close()
    assert errors == []


def test_the_gallery_reuses_settings_and_deletes(page, server, accounts):
    import httpx
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-gallery@example.com")
    page.get_by_label("Prompt", exact=True).fill("a heron at dawn")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("5")
    page.get_by_label("Seed", exact=True).fill("777")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator(".task").first.get_by_role("status")).to_have_text("Done", timeout=60_000)

    page.get_by_role("link", name="Gallery").click()
    card = page.locator("#gallery .task", has_text="a heron at dawn")
    image = card.get_by_role("img", name="Image 1, seed 777")
    expect(image).to_be_visible()
    # Shown again while its load is still out (as when the page starts slowly), the gallery
    # still lists each task once.
    listed = page.evaluate(
        """async () => {
          const loads = [], loadGallery = window.loadGallery;
          window.loadGallery = (...args) => {
            const load = loadGallery(...args);
            loads.push(load);
            return load;
          };
          for (let i = 0; i < 3; i++) dispatchEvent(new HashChangeEvent("hashchange"));
          window.loadGallery = loadGallery;
          await Promise.all(loads);  // each load rendered what it got, or stood down
          return [loads.length, document.querySelectorAll("#gallery .task").length];
        }"""
    )
    assert listed == [3, 1]
    card.get_by_text("Parameters").click()
    expect(card.locator("pre")).to_contain_text("Seed: 777")
    url = image.get_attribute("src")

    # Change the form, then take the task's settings back.
    page.get_by_role("link", name="Generate").click()
    page.get_by_label("Prompt", exact=True).fill("something else")
    page.get_by_role("link", name="Gallery").click()
    card.get_by_role("button", name="Use these settings").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("a heron at dawn")
    expect(page.get_by_label("Seed", exact=True)).to_have_value("777")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("5")

    page.get_by_role("link", name="Gallery").click()
    card.get_by_role("button", name="Delete").click()
    expect(card).to_have_count(0)
    assert httpx.get(url).status_code == 404  # its files are gone
    page.reload()
    expect(page.locator("#gallery .task", has_text="a heron at dawn")).to_have_count(0)


def test_admins_see_users_workers_and_queues(page, server, accounts):
    from playwright.sync_api import expect

    admin = accounts.add_user("ui-admin@example.com", "password123", admin=True)
    assert admin.is_admin
    target = client_for(accounts, server, "ui-managed@example.com")
    page.goto(server.url + "/")
    page.get_by_label("Email", exact=True).fill("ui-admin@example.com")
    page.get_by_label("Password", exact=True).fill("password123")
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Admin").click()
    row = page.locator("#admin-users tbody tr", has_text="ui-managed@example.com")
    expect(row).to_contain_text("active")
    row.get_by_role("button", name="Disable ui-managed@example.com").click()
    expect(row).to_contain_text("disabled")
    row.get_by_role("button", name="Enable ui-managed@example.com").click()
    expect(row).to_contain_text("active")
    assert target.get("/huabu/v1/me").status_code == 200
    expect(page.locator("#admin-workers tbody tr").first).to_be_visible()  # the server's worker


def test_others_see_no_admin_link(page, server, accounts):
    log_in(page, server, accounts, "ui-plain@example.com")
    assert page.get_by_role("link", name="Admin").count() == 0


def png_file(name: str, image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"name": name, "mimeType": "image/png", "buffer": buffer.getvalue()}


def gradient(size: int = 64) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    rgb = np.stack(
        [
            np.tile(ramp, (size, 1)),
            np.tile(ramp[:, None], (1, size)),
            np.full((size, size), 128, np.uint8),
        ],
        axis=-1,
    )
    return Image.fromarray(rgb, "RGB")


def test_the_live_preview_and_step_counter_change(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-live@example.com")
    page.get_by_label("Prompt", exact=True).fill("a slow sunrise")
    page.get_by_label("Width", exact=True).fill("256")
    page.get_by_label("Height", exact=True).fill("256")
    page.get_by_label("Steps", exact=True).fill("40")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    preview = card.get_by_role("img", name="Preview")
    expect(preview).to_be_visible(timeout=60_000)
    assert preview.get_attribute("src").startswith("data:image/png;base64,")
    first = card.get_by_role("status").inner_text()
    assert first.startswith("Step ")
    expect(card.get_by_role("status")).not_to_have_text(first)  # the counter moves on
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    expect(preview).to_be_hidden()  # the image itself now
    expect(card.get_by_role("img", name="Image 1", exact=False)).to_be_visible()


def test_inpainting_with_a_painted_mask(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-paint@example.com")
    source = gradient()
    page.get_by_label("Prompt", exact=True).fill("a red door")
    page.get_by_label("Steps", exact=True).fill("6")
    page.get_by_text("Image to image and inpainting").click()
    page.get_by_label("Source image", exact=True).set_input_files(png_file("wall.png", source))
    canvas = page.get_by_label("Mask", exact=True)
    expect(canvas).to_be_visible()
    expect(page.get_by_label("Width", exact=True)).to_have_value("64")  # the source's size
    page.get_by_label("Strength", exact=True).fill("1")
    page.get_by_label("Brush size", exact=True).fill("128")
    # Paint the left half, then invert: the mask is the right half.
    box = canvas.bounding_box()
    for row in range(0, 5):
        y = box["y"] + box["height"] * (row + 0.5) / 5
        page.mouse.move(box["x"] + 2, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, y, steps=5)
        page.mouse.up()
    page.get_by_role("button", name="Invert mask").click()
    page.get_by_label("Mask blur", exact=True).fill("2")
    page.get_by_label("Masked content").select_option("fill")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    card.get_by_text("Parameters").click()
    expect(card.locator("pre")).to_contain_text("Mask blur: 2")
    url = card.get_by_role("img", name="Image 1", exact=False).get_attribute("src")
    made = np.asarray(Image.open(io.BytesIO(httpx.get(url).content)).convert("RGB"), np.int16)
    kept = np.asarray(source, np.int16)
    # Left of the (blurred) edge the source stays; right of it the image is painted anew.
    assert np.abs(made[:, :12] - kept[:, :12]).max() <= 3
    assert np.abs(made[:, 40:] - kept[:, 40:]).mean() > 20


def test_models_adapters_and_controlnet_are_sent(page, server, accounts, styles):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-extras@example.com")
    page.get_by_label("Prompt", exact=True).fill("a fox, demo-embedding")
    page.get_by_role("group", name="Styles").get_by_label("oil painting").check()
    page.get_by_label("Size preset").select_option("64 × 64")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_text("LoRAs, VAE, embeddings").click()
    page.get_by_label("VAE").select_option("demo-vae")
    page.get_by_label("Add LoRA").select_option("demo-lora")
    page.get_by_label("Weight of demo-lora").fill("0.5")
    page.get_by_label("demo-embedding").check()
    page.get_by_text("ControlNet and IP-Adapter").click()
    page.get_by_role("button", name="Add ControlNet unit").click()
    unit = page.get_by_role("group", name="ControlNet unit 1")
    unit.get_by_label("Preprocessor").select_option("canny")
    unit.get_by_label("Control image").set_input_files(png_file("edges.png", gradient()))
    unit.get_by_label("Start", exact=True).fill("0.1")
    unit.get_by_label("End", exact=True).fill("0.8")
    page.get_by_role("combobox", name="IP-Adapter", exact=True).select_option("demo-ip-adapter")
    page.get_by_label("IP-Adapter image").set_input_files(png_file("look.png", gradient()))
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    card.get_by_text("Parameters").click()
    info = card.locator("pre")
    expect(info).to_contain_text("oil painting of a fox, demo-embedding, thick brush strokes")
    expect(info).to_contain_text("VAE: demo-vae")
    expect(info).to_contain_text("LoRAs: demo-lora:0.5")
    expect(info).to_contain_text(
        'ControlNet 0: "Module: canny, Model: demo-controlnet, Weight: 1, Guidance Start: 0.1, '
        'Guidance End: 0.8"'
    )
    # The units and the adapter went with it (the infotext does not list the adapter).
    task_id = card.get_attribute("id").removeprefix("task-")
    sent = page.evaluate(
        """async (id) => (await fetch(`/huabu/v1/tasks/${id}`, {headers:
        {Authorization: `Bearer ${localStorage.getItem("huabu.token")}`}})).json()""",
        task_id,
    )
    request = sent["request"]
    assert request["embeddings"] == ["demo-embedding"]
    units = [(u["model"], u["preprocessor"], u["start"], u["end"]) for u in request["controlnets"]]
    assert units == [("demo-controlnet", "canny", 0.1, 0.8)]
    assert request["ip_adapter"]["name"] == "demo-ip-adapter"


def test_the_extras_on_offer_fit_the_chosen_model(page, server, accounts):
    """An SDXL LoRA, embedding or ControlNet is not offered for an SD 1.x model, and is for an
    SDXL one; the demo's SD 1.x extras say no family (their files are too small to tell), so
    they are offered for both. A choice already made stays when the model changes."""
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-families@example.com")
    model = page.locator("#model")
    page.get_by_text("LoRAs, VAE, embeddings").click()
    page.get_by_text("ControlNet and IP-Adapter").click()
    page.get_by_role("button", name="Add ControlNet unit").click()
    unit = page.get_by_role("group", name="ControlNet unit 1")
    unit_model = unit.get_by_label("ControlNet model")
    offered = {
        "LoRA": lambda: page.get_by_label("Add LoRA").locator("option").all_inner_texts(),
        "ControlNet": lambda: unit_model.locator("option").all_inner_texts(),
    }
    assert "demo-flux · FLUX.1" in model.locator("option").all_inner_texts()  # its family
    model.select_option("demo-flux")
    assert "demo-flux-lora" in offered["LoRA"]() and "demo-xl-lora" not in offered["LoRA"]()
    model.select_option("demo")
    assert "demo-lora" in offered["LoRA"]() and "demo-xl-lora" not in offered["LoRA"]()
    assert "demo-flux-lora" not in offered["LoRA"]()
    assert "demo-controlnet" in offered["ControlNet"]()
    assert "demo-xl-controlnet" not in offered["ControlNet"]()
    expect(page.get_by_label("demo-xl-embedding")).to_be_hidden()
    expect(page.get_by_label("demo-embedding")).to_be_visible()

    model.select_option("demo-xl")
    assert {"demo-lora", "demo-xl-lora"} <= set(offered["LoRA"]())
    assert "demo-xl-controlnet" in offered["ControlNet"]()
    expect(page.get_by_label("demo-xl-embedding")).to_be_visible()
    page.get_by_label("Add LoRA").select_option("demo-xl-lora")
    page.get_by_label("demo-xl-embedding").check()
    unit_model.select_option("demo-xl-controlnet")

    model.select_option("demo")  # what was chosen stays, for the user to see and take off
    expect(page.get_by_label("Weight of demo-xl-lora")).to_be_visible()
    expect(page.get_by_label("demo-xl-embedding")).to_be_checked()
    expect(unit_model).to_have_value("demo-xl-controlnet")
    assert "demo-xl-lora" not in offered["LoRA"]()


def test_hires_fix_refiner_variation_and_tiling_from_the_form(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-advanced@example.com")
    page.get_by_label("Prompt", exact=True).fill("a lighthouse")
    model = page.locator("#model")  # (its label lists its options)
    model.select_option("demo-xl")
    expect(model.locator("option", has_text="demo-xl-refiner")).to_have_count(0)
    page.get_by_label("Size preset").select_option("64 × 64")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_label("Sampler").select_option("Euler")
    page.get_by_text("Hires fix, refiner, variation, tiling").click()
    page.get_by_label("Hires fix", exact=True).check()
    page.get_by_label("Upscale by", exact=True).fill("1.5")
    page.get_by_label("Hires steps", exact=True).fill("3")
    page.locator("#hires-upscaler").select_option("demo-upscaler")  # a model upscaler
    page.get_by_role("combobox", name="Refiner", exact=True).select_option("demo-xl-refiner")
    page.get_by_label("Switch at", exact=True).fill("0.6")
    page.get_by_label("Variation seed", exact=True).fill("7")
    page.get_by_label("Variation strength", exact=True).fill("0.3")
    page.get_by_label("Tiling", exact=True).check()
    page.get_by_role("combobox", name="Image format").select_option("webp")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_have_text("Done", timeout=90_000)
    image = card.get_by_role("img", name="Image 1", exact=False)
    assert image.evaluate("img => img.naturalWidth") == 96  # upscaled 1.5×
    assert httpx.get(image.get_attribute("src")).headers["content-type"] == "image/webp"
    card.get_by_text("Parameters").click()
    info = card.locator("pre")
    for text in (
        "Hires upscale: 1.5",
        "Hires steps: 3",
        "Hires upscaler: demo-upscaler",
        "Refiner: demo-xl-refiner",
        "Refiner switch at: 0.6",
        "Variation seed: 7",
        "Variation seed strength: 0.3",
        "Tiling: True",
    ):
        expect(info).to_contain_text(text)
    # A fresh form, then the task's settings back, these included.
    page.reload()
    page.get_by_role("link", name="Gallery").click()
    page.locator("#gallery .task", has_text="a lighthouse").get_by_role(
        "button", name="Use these settings"
    ).click()
    expect(page.get_by_label("Hires fix", exact=True)).to_be_checked()
    expect(page.get_by_label("Upscale by", exact=True)).to_have_value("1.5")
    expect(page.get_by_role("combobox", name="Refiner", exact=True)).to_have_value(
        "demo-xl-refiner"
    )
    expect(page.get_by_label("Variation strength", exact=True)).to_have_value("0.3")
    expect(page.get_by_label("Tiling", exact=True)).to_be_checked()


def test_training_from_upload_to_use(page, server, accounts):
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-trainer@example.com")
    page.get_by_role("link", name="Training").click()
    foxes = [
        png_file(f"fox{i}.png", Image.new("RGB", (64, 64), colour))
        for i, colour in enumerate([(250, 20, 20), (230, 60, 10)])
    ]
    page.get_by_label("Training images", exact=True).set_input_files(foxes)
    page.get_by_label("Name", exact=True).fill("ui fox")
    page.get_by_label("Trigger word", exact=True).fill("sks fox")
    page.get_by_label("Base model").select_option("demo")
    page.get_by_label("Training steps", exact=True).fill("6")
    page.get_by_label("Resolution", exact=True).fill("64")
    page.get_by_label("What the images show").select_option("Animals")
    page.get_by_label("Rank", exact=True).fill("2")
    page.get_by_label("Learning rate", exact=True).fill("0.0002")
    page.get_by_role("button", name="Start training").click()
    card = page.locator("#trainings .task").first
    expect(card).to_contain_text("Training: ui_fox")
    expect(card.get_by_role("status")).to_have_text("Done", timeout=120_000)
    sent = page.evaluate(
        """async (id) => (await fetch(`/huabu/v1/tasks/${id}`, {headers:
        {Authorization: `Bearer ${localStorage.getItem("huabu.token")}`}})).json()""",
        card.get_attribute("id").removeprefix("task-"),
    )["request"]
    assert (sent["main_body"], sent["rank"], sent["learning_rate"]) == ("Animals", 2, 0.0002)
    expect(page.locator("#trained")).to_contain_text("ui_fox")
    card.get_by_role("button", name="Generate with it").click()
    expect(page.get_by_label("Weight of ui_fox")).to_have_value("1")
    expect(page.get_by_label("Prompt", exact=True)).to_have_value("sks fox")
    page.get_by_label("Size preset").select_option("64 × 64")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_role("button", name="Generate").click()
    made = page.locator("#tasks .task").first
    expect(made.get_by_role("status")).to_have_text("Done", timeout=60_000)
    made.get_by_text("Parameters").click()
    expect(made.locator("pre")).to_contain_text("LoRAs: ui_fox:1")


def test_a_lost_connection_reconnects(page, server, accounts):
    from playwright.sync_api import expect

    cut = []

    def once(route):
        if not cut:
            cut.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    log_in(page, server, accounts, "ui-offline@example.com")
    page.route("**/events", once)
    page.get_by_label("Prompt", exact=True).fill("a ferry in fog")
    page.get_by_label("Size preset").select_option("64 × 64")
    page.get_by_label("Steps", exact=True).fill("4")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_have_text("Reconnecting…")
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    assert cut


def test_a_flux_model_shows_its_own_controls_and_generates(page, server, accounts):
    """Choosing FLUX.1 offers its samplers and its distilled guidance, hides SD's extras and
    sets its usual steps and guidance; what it makes says so in its parameters."""
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-flux@example.com")
    sampler = page.get_by_label("Sampler")
    page.locator("#model").select_option("demo-flux")
    expect(page.get_by_label("Distilled guidance")).to_have_value("3.5")
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("1")
    expect(page.get_by_label("Steps", exact=True)).to_have_value("28")
    assert sampler.locator("option").all_inner_texts() == [
        "Euler",
        "Euler a",
        "Heun",
        "DPM2",
        "DPM++ 2M",
    ]
    expect(page.locator("#control")).to_be_hidden()
    # The hires fix stays (its latent modes too); the refiner and variation go.
    page.get_by_text("Hires fix, refiner, variation, tiling").click()
    expect(page.get_by_role("combobox", name="Refiner", exact=True)).to_be_hidden()
    expect(page.locator("#subseed")).to_be_hidden()
    upscalers = page.locator("#hires-upscaler option:not([hidden])").all_inner_texts()
    assert "Latent" in upscalers and "Lanczos" in upscalers
    page.locator("#hires-on").check()
    page.locator("#hires-upscaler").select_option("Lanczos")
    page.get_by_label("Hires steps").fill("2")
    page.get_by_label("Prompt", exact=True).fill("a red fox")
    page.get_by_label("Width", exact=True).fill("64")
    page.get_by_label("Height", exact=True).fill("64")
    page.get_by_label("Steps", exact=True).fill("3")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Distilled guidance").fill("5")
    sampler.select_option("DPM++ 2M")
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    card.get_by_role("img", name="Image 1, seed 7").click()
    parameters = page.get_by_role("dialog", name="Image 1, seed 7").locator("pre")
    expect(parameters).to_contain_text("Sampler: DPM++ 2M")
    expect(parameters).to_contain_text("Distilled CFG Scale: 5")
    expect(parameters).to_contain_text("Hires upscaler: Lanczos")
    page.get_by_role("dialog").get_by_role("button", name="Close").click()
    # Back on an SD model: every sampler and SD's extras again, with SD's usual values.
    page.locator("#model").select_option("demo")
    expect(page.locator("#control")).to_be_visible()
    expect(page.get_by_role("combobox", name="Refiner", exact=True)).to_be_visible()
    expect(page.locator("#subseed")).to_be_visible()
    expect(page.get_by_label("Distilled guidance")).to_be_hidden()
    expect(page.get_by_label("Guidance", exact=True)).to_have_value("7")
    assert len(sampler.locator("option").all_inner_texts()) == 20


def test_an_editing_model_takes_the_image_to_edit_without_strength_or_mask(page, server, accounts):
    """FLUX.1 Kontext: the source image is the image to edit, so the page hides the strength
    and sends none (a painted mask would edit inside it); its distilled guidance starts at
    Kontext's 2.5."""
    from playwright.sync_api import expect

    log_in(page, server, accounts, "ui-kontext@example.com")
    page.locator("#model").select_option("demo-flux-kontext")
    expect(page.get_by_label("Distilled guidance")).to_have_value("2.5")
    page.get_by_label("Prompt", exact=True).fill("make it blue")
    page.get_by_label("Steps", exact=True).fill("3")
    page.get_by_text("Image to image and inpainting").click()
    page.get_by_label("Source image", exact=True).set_input_files(png_file("wall.png", gradient()))
    expect(page.locator("#source-view")).to_be_visible()
    expect(page.get_by_label("Strength", exact=True)).to_be_hidden()
    expect(page.get_by_label("Mask", exact=True)).to_be_visible()
    page.get_by_role("button", name="Generate").click()
    card = page.locator(".task").first
    expect(card.get_by_role("status")).to_have_text("Done", timeout=60_000)
    card.get_by_role("img", name="Image 1", exact=False).first.click()
    parameters = page.get_by_role("dialog").locator("pre")
    expect(parameters).to_contain_text("Distilled CFG Scale: 2.5")
    expect(parameters).to_contain_text("Denoising strength: 1")
    page.get_by_role("dialog").get_by_role("button", name="Close").click()
    # Back on an SD model, image-to-image has its strength again.
    page.locator("#model").select_option("demo")
    expect(page.get_by_label("Strength", exact=True)).to_be_visible()
