"""Engine behaviour a user notices: seeds, img2img, single files, cancellation, VAE override."""

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REF, loaded, max_difference, pixels
from huabu.engine.engine import Engine
from huabu.errors import Cancelled
from huabu.native import GenerationRequest
from huabu.settings import Settings


def test_image_i_uses_seed_plus_i(engine, small):
    batch = engine.generate(small(seed=42, n_images=3))
    assert batch.seeds == [42, 43, 44]
    alone = engine.generate(small(seed=44))
    # Batched matmuls may round differently from a batch of one; the image is the same.
    assert max_difference(batch.images[2], alone.images[0]) <= 2
    assert max_difference(batch.images[0], batch.images[1]) > 20


def test_random_seed_is_resolved_and_reported(engine, small):
    result = engine.generate(small(seed=-1))
    assert result.seeds[0] >= 0 and result.request.seed == result.seeds[0]
    again = engine.generate(small(seed=result.seeds[0]))
    assert np.array_equal(pixels(result.images[0]), pixels(again.images[0]))
    assert f"Seed: {result.seeds[0]}," in result.infotexts[0]


def test_non_square_sizes(engine, small):
    result = engine.generate(small(width=96, height=64))
    assert result.images[0].size == (96, 64)


@pytest.mark.parametrize(
    "sampler",
    ["Euler a", pytest.param("DPM++ 2S a Karras", marks=pytest.mark.slow), "DPM fast"],
)
def test_img2img_init_image_steers_the_result_more_at_low_strength(engine, small, sampler):
    rng = np.random.default_rng(0)
    green = Image.new("RGB", (48, 48), (20, 200, 40))  # resized to the requested 64×64
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))

    def run(init, strength):
        request = small(sampler=sampler, init_image=REF, strength=strength)
        return pixels(engine.generate(request, init_image=init).images[0])

    gap_low = np.abs(run(green, 0.3) - run(noise, 0.3)).mean()
    gap_high = np.abs(run(green, 0.95) - run(noise, 0.95)).mean()
    assert gap_low > 2 * gap_high
    text2image = pixels(engine.generate(small(sampler=sampler)).images[0])
    assert np.abs(run(green, 0.3) - text2image).mean() > 5
    low = engine.generate(small(sampler=sampler, init_image=REF, strength=0.3), init_image=green)
    assert low.images[0].size == (64, 64)
    assert "Denoising strength: 0.3" in low.infotexts[0]


@pytest.mark.slow
def test_single_file_checkpoint_loads_the_same_weights_as_the_folder(settings, small):
    engine = Engine(settings)  # its own cache: no LoRA or embedding loaded by other tests
    folder = loaded(engine, "demo").components
    single = loaded(engine, "demo-single").components
    for name in ("unet", "vae", "text_encoder"):
        a, b = folder[name].state_dict(), single[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    one = engine.generate(small(model="demo"))
    two = engine.generate(small(model="demo-single"))
    assert np.array_equal(pixels(one.images[0]), pixels(two.images[0]))
    assert "Model hash: " in two.infotexts[0]  # single files carry A1111's short hash


@pytest.mark.parametrize("sampler", ["Euler", "DPM adaptive"])
def test_cancellation_stops_within_a_step(engine, small, sampler):
    seen = []

    def cancel_after_three():
        return len(seen) >= 3

    with pytest.raises(Cancelled):
        engine.generate(
            small(sampler=sampler, steps=20),
            on_progress=lambda s, t, _p: seen.append(s),
            should_cancel=cancel_after_three,
        )
    assert len(seen) <= 4


def test_vae_override_is_used_and_does_not_stick(engine, small, settings):
    vae_dir = settings.models_dir / "vae"
    vae = loaded(engine, "demo").components["vae"]
    original = {k: v.clone() for k, v in vae.state_dict().items()}
    with torch.no_grad():
        for parameter in vae.decoder.conv_out.parameters():
            parameter.mul_(-1)
    vae.save_pretrained(vae_dir / "inverted")
    vae.load_state_dict(original)

    base = engine.generate(small())
    inverted = engine.generate(small(vae="inverted"))
    after = engine.generate(small())
    assert max_difference(base.images[0], inverted.images[0]) > 50
    assert np.array_equal(pixels(base.images[0]), pixels(after.images[0]))
    assert "VAE: inverted" in inverted.infotexts[0]


def test_single_file_vae_in_a1111_layout(engine, small, settings):
    from safetensors.torch import save_file

    from huabu.demos.ldm_layout import vae_to_ldm

    vae = loaded(engine, "demo").components["vae"]
    state = vae_to_ldm(vae.state_dict(), dict(vae.config))
    prefix = "first_stage_model."
    # Standalone VAE files (e.g. vae-ft-mse-840000) carry no first_stage_model. prefix.
    save_file(
        {k[len(prefix) :]: v.contiguous() for k, v in state.items()},
        str(settings.models_dir / "vae" / "same-weights.safetensors"),
    )
    base = engine.generate(small())
    overridden = engine.generate(small(vae="same-weights"))
    assert np.array_equal(pixels(base.images[0]), pixels(overridden.images[0]))


@pytest.mark.slow
def test_pipeline_cache_evicts_least_recently_used(settings, small):
    from huabu.engine.engine import Engine

    engine = Engine(settings.model_copy(update={"pipeline_cache_size": 1}))
    engine.generate(small(model="demo"))
    engine.generate(small(model="demo-single"))
    assert engine.cache.loaded() == ["demo-single"]


def test_request_round_trips_through_json():
    request = GenerationRequest(model="demo", prompt="fox", seed=7, output_format="webp")
    assert GenerationRequest.model_validate_json(request.model_dump_json()) == request


@pytest.mark.slow
def test_the_v_prediction_demo_runs_as_sd2_and_its_prediction_type_is_used(settings, tmp_path):
    """demo-v (SD 2.x traits, v-prediction) generates with a diffusers sampler and a
    k-diffusion one; the same weights read as epsilon-prediction give other images, so both
    paths use the prediction type the model declares."""
    import json
    import shutil

    from huabu.catalog.library import ModelLibrary

    source = settings.models_dir / "checkpoints" / "demo-v"
    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "demo-v").symlink_to(source)
    shutil.copytree(source, checkpoints / "demo-eps")
    config_file = checkpoints / "demo-eps" / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    assert config["prediction_type"] == "v_prediction"
    config_file.write_text(json.dumps(config | {"prediction_type": "epsilon"}))
    local = Settings(home=tmp_path, threads=2)
    entry = ModelLibrary(local).find("checkpoints", "demo-v")
    assert entry.describe_architecture == "SD 2.x"
    engine = Engine(local)
    for sampler in ("Euler", "DPM fast"):
        request = GenerationRequest(
            model="demo-v", prompt="a fox", width=64, height=64, steps=8, seed=5, sampler=sampler
        )
        v_image = engine.generate(request).images[0]
        eps = engine.generate(request.model_copy(update={"model": "demo-eps"})).images[0]
        assert max_difference(v_image, eps) > 8, sampler
        assert np.asarray(v_image).std() > 1  # an image, not a flat or NaN-black field


def test_large_images_are_decoded_in_vae_tiles(settings, small, monkeypatch):
    """Above HUABU_VAE_TILE_SIZE a side, the VAE decodes in overlapping tiles (memory bounded
    by the tile): the image keeps its size and looks the same, seams blended."""
    from diffusers import AutoencoderKL

    calls = []
    tiled_decode = AutoencoderKL.tiled_decode

    def spy(self, *args, **kwargs):
        calls.append(args[0].shape)
        return tiled_decode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "tiled_decode", spy)
    request = small(width=160, height=96, steps=4)
    whole = Engine(settings).generate(request)  # default 1024: one piece
    assert calls == []
    tiles = Engine(settings.model_copy(update={"vae_tile_size": 64})).generate(request)
    assert calls and tiles.images[0].size == (160, 96)
    difference = np.abs(pixels(tiles.images[0]) - pixels(whole.images[0]))
    assert 0 < difference.mean() < 8, difference.mean()
    decodes = len(calls)
    seamless = Engine(settings.model_copy(update={"vae_tile_size": 64}))
    seamless.generate(small(width=160, height=96, steps=4, tiling=True))
    assert len(calls) == decodes  # a seamless (tiling) image decodes in one piece
