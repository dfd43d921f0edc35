"""What SD 3.x, Z-Image and Qwen-Image share with FLUX.1 beyond text-to-image: inpainting
through their own diffusers pipelines (pasted back as on SD) and LoRAs through their own
loaders, on their tiny demos."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from helpers import max_difference, pixels
from huabu.catalog.architectures import Architecture
from huabu.demos.flux import DEMO_FLUX, DEMO_FLUX_LORA
from huabu.demos.qwen import DEMO_QWEN_IMAGE
from huabu.demos.sd3 import DEMO_SD3
from huabu.demos.zimage import DEMO_Z_IMAGE
from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest, ImageRef, InpaintRef, LoraRef

#: Twenty-odd generations on four families' demos: the full suite's, not the edit loop's.
pytestmark = pytest.mark.slow

#: Each demo, and the family its LoRA is listed with (None: an SD 3 LoRA in the diffusers
#: layout names layers FLUX.1's have too, so its file does not tell).
DEMOS = [
    (DEMO_SD3, None),
    (DEMO_Z_IMAGE, Architecture.Z_IMAGE),
    (DEMO_QWEN_IMAGE, Architecture.QWEN_IMAGE),
]


def request(model: str, **changes) -> GenerationRequest:
    base = {"model": model, "prompt": "a red fox", "width": 64, "height": 64, "steps": 3}
    return GenerationRequest(**(base | {"seed": 7} | changes))


@pytest.mark.parametrize(
    ("model", "sampler"),
    [(model, "Euler") for model, _ in DEMOS] + [(DEMO_FLUX, "DPM++ 2M"), (DEMO_SD3, "Euler a")],
)
def test_inpainting_repaints_only_the_mask(engine, model, sampler):
    source = Image.new("RGB", (64, 64), (220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = InpaintRef(mask=ImageRef(key="m"), blur=0)
    made = engine.generate(
        request(
            model, init_image=ImageRef(key="x"), strength=1.0, inpaint=inpaint, sampler=sampler
        ),
        init_image=source,
        mask_image=mask,
    ).images[0]
    # Outside the mask the source's own pixels; inside, a new picture.
    assert made.crop((0, 0, 64, 16)).tobytes() == source.crop((0, 0, 64, 16)).tobytes()
    assert max_difference(made.crop((16, 16, 48, 48)), source.crop((16, 16, 48, 48))) > 32


@pytest.mark.parametrize(("model", "lora_family"), DEMOS)
def test_a_lora_changes_the_image_and_leaves_nothing_behind(engine, model, lora_family):
    lora = f"{model}-lora"
    assert engine.library.find("loras", lora).architecture is lora_family
    before = engine.generate(request(model)).images[0]
    styled = engine.generate(request(model, loras=(LoraRef(name=lora),))).images[0]
    half = engine.generate(request(model, loras=(LoraRef(name=lora, weight=0.5),))).images[0]
    off = engine.generate(request(model, loras=(LoraRef(name=lora, weight=0),))).images[0]
    after = engine.generate(request(model)).images[0]
    assert max_difference(styled, before) > 16 and max_difference(half, styled) > 4
    # Weight 0, and every request after one with a LoRA, is the model's own image exactly.
    assert pixels(off).tolist() == pixels(before).tolist() == pixels(after).tolist()
    # FLUX.1's LoRA is refused by its field before anything runs.
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(model, loras=(LoraRef(name=DEMO_FLUX_LORA),)))
    assert refused.value.param == "loras.0.name" and "FLUX.1" in refused.value.message


@pytest.mark.parametrize(("model", "lora_family"), DEMOS)
def test_each_step_is_previewed_live(engine, model, lora_family):
    """Each step's latents through the family's VAE map (FLUX's for Z-Image, SD 3's, Wan
    2.1's for Qwen-Image; Qwen-Image's packed tokens unpacked first), at 1/8 of the size."""
    seen, previews = [], []

    def progress(step, total, preview):
        seen.append((step, total))
        previews.append(Image.open(io.BytesIO(preview())))

    engine.generate(request(model, width=128), on_progress=progress)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert [p.size for p in previews] == [(16, 8)] * 3
    assert max_difference(previews[0], previews[-1]) > 0


@pytest.mark.parametrize(
    ("model", "sampler", "guidance"),
    [
        (DEMO_FLUX, "Euler", 1.0),  # FLUX.1: the pipeline's own Euler, distilled guidance
        (DEMO_FLUX, "DPM++ 2M", 2.0),  # huabu's loop, with true CFG and negative prompts
        (DEMO_SD3, "Euler", 3.5),  # the pipelines that encode the prompts themselves
        (DEMO_Z_IMAGE, "Euler", 1.0),
        (DEMO_QWEN_IMAGE, "Euler", 4.0),
    ],
)
def test_a_batch_shares_one_call_and_each_request_gets_its_own_images(
    engine, monkeypatch, model, sampler, guidance
):
    """Text-to-image requests of one batch key and the same guidance run as one pipeline
    call; each keeps its prompt, negative prompt and seeds, and gets the images it gets alone.
    Another guidance runs in a call of its own."""
    shared = {"sampler": sampler, "guidance": guidance}
    negative = {"negative_prompt": "blurry"} if guidance > 1 else {}
    requests = [
        request(model, prompt="a red fox", seed=3, n_images=2, **shared, **negative),
        request(model, prompt="a blue whale at sea", seed=40, **shared),
        request(model, prompt="a red fox", seed=9, **(shared | {"guidance": guidance + 1})),
    ]
    calls = []
    seen: list[list[tuple[int, int]]] = [[] for _ in requests]
    from huabu.engine import flow

    original = flow.generate_many

    def counted(model_, members, callback):
        calls.append(len(members))
        return original(model_, members, callback)

    monkeypatch.setattr(flow, "generate_many", counted)
    batched = engine.generate_batch(
        requests,
        [lambda s, t, _p, mine=mine: mine.append((s, t)) for mine in seen],
        [lambda: False] * len(requests),
    )
    assert calls == [2]  # the first two together; the third (another guidance) alone
    for request_, result, progress in zip(requests, batched, seen, strict=True):
        alone = engine.generate(request_)
        assert result.seeds == alone.seeds and len(result.images) == request_.n_images
        for mine, single in zip(result.images, alone.images, strict=True):
            assert max_difference(mine, single) <= 2
        assert result.infotexts == alone.infotexts
        assert progress[-1] == (3, 3)
    assert max_difference(batched[0].images[0], batched[1].images[0]) > 0


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_a_scheduled_sampler_steps_as_huabus_loop_does(engine, sampler):
    """The pipelines that keep their own loop step Euler a and DPM++ 2M with a scheduler of
    the same arithmetic as huabu's loop: FLUX.1 Kontext without an image (its pipeline's
    loop, FLUX.1's weights) gives what demo-flux gives through the loop."""
    from huabu.demos.flux import DEMO_FLUX_KONTEXT

    same = {"sampler": sampler, "distilled_guidance": 3.5, "steps": 4}
    scheduled = engine.generate(request(DEMO_FLUX_KONTEXT, **same)).images[0]
    looped = engine.generate(request(DEMO_FLUX, **same)).images[0]
    assert max_difference(scheduled, looped) <= 1
    euler = engine.generate(request(DEMO_FLUX_KONTEXT, **(same | {"sampler": "Euler"})))
    assert max_difference(scheduled, euler.images[0]) > 4  # (the sampler did change it)


@pytest.mark.parametrize(("model", "lora_family"), DEMOS)
def test_euler_a_and_dpmpp_2m_run_in_the_pipelines_loop(engine, model, lora_family):
    euler = engine.generate(request(model, steps=4)).images[0]
    for sampler in ("Euler a", "DPM++ 2M"):
        seen: list[tuple[int, int]] = []
        made = engine.generate(
            request(model, steps=4, sampler=sampler),
            on_progress=lambda step, total, _preview, seen=seen: seen.append((step, total)),
        )
        again = engine.generate(request(model, steps=4, sampler=sampler)).images[0]
        assert pixels(made.images[0]).tolist() == pixels(again).tolist()  # seeded
        assert max_difference(made.images[0], euler) > 0
        assert seen[-1] == (4, 4) and made.request.sampler == sampler
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(request(model, sampler="Heun"))
    assert refused.value.param == "sampler"
    assert "Euler, Euler a, DPM++ 2M" in refused.value.message


def test_the_hires_fix_upscales_latents_on_sd3_and_images_on_the_others(engine):
    from huabu.native import HiresFix

    latent = HiresFix(scale=2.0, upscaler="Latent (bicubic)", steps=2, strength=0.5)
    made = engine.generate(request(DEMO_SD3, hires=latent)).images[0]
    assert made.size == (128, 128)
    for model in (DEMO_Z_IMAGE, DEMO_QWEN_IMAGE):
        lanczos = latent.model_copy(update={"upscaler": "Lanczos"})
        assert engine.generate(request(model, hires=lanczos)).images[0].size == (128, 128)
        with pytest.raises(InvalidRequest) as refused:
            engine.generate(request(model, hires=latent))
        assert refused.value.param == "hires.upscaler" and "Lanczos" in refused.value.message


#: Every flow demo and what its listing says (the clients send CFG 1, as Forge's users do for
#: the flow families: no true CFG).
EVERY_DEMO = [
    ("demo-flux", "flux1"),
    ("demo-flux-gguf", "flux1"),
    ("demo-flux-kontext", "flux1-kontext"),
    ("demo-flux2", "flux2"),
    ("demo-flux2-klein", "flux2-klein"),
    (DEMO_SD3, "sd3"),
    (DEMO_Z_IMAGE, "z-image"),
    (DEMO_QWEN_IMAGE, "qwen-image"),
    ("demo-qwen-image-edit", "qwen-image-edit"),
]


def test_every_flow_family_through_webuiapi_and_novita_client(server, accounts):
    """Each flow demo through A1111's client (picked by ``override_settings``, as Forge users
    do) and novita's (``model_name``): listed with its family, the same seed gives the same
    pixels, another seed other pixels."""
    import httpx
    import webuiapi
    from novita_client import NovitaClient
    from novita_client.proto import V3TaskResponseStatus

    accounts.add_user("families@example.com", "password123")
    api = webuiapi.WebUIApi(
        baseurl=server.url + "/sdapi/v1", username="families@example.com", password="password123"
    )
    novita = NovitaClient(
        accounts.create_key(accounts.user_by_email("families@example.com").id),
        base_url=server.url,
    )
    listed = {m["title"]: m for m in api.get_sd_models()}
    huabu_listing = httpx.get(
        server.url + "/huabu/v1/models", auth=("families@example.com", "password123")
    ).json()["data"]
    families = {m["name"]: m["architecture"] for m in huabu_listing}
    for name, family in EVERY_DEMO:
        assert name in listed, name
        assert families[name] == family
        picked = {"override_settings": {"sd_model_checkpoint": name}, "width": 64, "height": 64}
        run = {"prompt": "a fox", "sampler_name": "Euler", "steps": 2, "cfg_scale": 1} | picked
        first, again, other = (api.txt2img(seed=seed, **run) for seed in (5, 5, 6))
        assert first.info["sd_model_name"] == name
        assert pixels(first.image).tolist() == pixels(again.image).tolist(), name
        assert max_difference(first.image, other.image) > 0, name
        result = novita.txt2img_v3(
            model_name=name,
            prompt="a fox",
            image_num=1,
            width=128,  # (novita's smallest)
            height=128,
            steps=2,
            seed=5,
            sampler_name="Euler",
            guidance_scale=1,
            response_image_type="png",
        )
        assert result.task.status == V3TaskResponseStatus.TASK_STATUS_SUCCEED, name
        picture = Image.open(io.BytesIO(httpx.get(result.images[0].image_url).content))
        assert picture.size == (128, 128)
