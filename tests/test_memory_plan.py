"""HUABU_QUANTIZE and HUABU_OFFLOAD: the plan ``auto`` makes for the published model sizes on
the cards operators have, torchao's weight-only quantization on a real demo model, what a
CPU worker refuses at its start, and where the chosen plan shows."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import loaded, pixels
from huabu.engine.memory_plan import MemoryPlan, choose, component_bytes
from huabu.errors import WorkerMisconfigured
from huabu.native import GenerationRequest, LoraRef
from huabu.settings import Settings

GB = 10**9
#: Published bf16 sizes: FLUX.1 [dev] (12B transformer, T5-XXL, CLIP-L, its VAE) and
#: Qwen-Image (20B transformer, Qwen2.5-VL-7B, its VAE).
FLUX1_DEV = {"transformer": 23.8 * GB, "text_encoder_2": 9.52 * GB,
             "text_encoder": 0.25 * GB, "vae": 0.17 * GB}  # fmt: skip
QWEN_IMAGE = {"transformer": 40.9 * GB, "text_encoder": 16.6 * GB, "vae": 0.25 * GB}


@pytest.mark.parametrize(
    "sizes, free, weight_only, expected",
    [
        (FLUX1_DEV, 79 * GB, "fp8", MemoryPlan("none", "none")),  # an 80 GB card: whole
        (FLUX1_DEV, 23 * GB, "fp8", MemoryPlan("fp8", "model")),  # a 24 GB Ada card
        (FLUX1_DEV, 23 * GB, "int8", MemoryPlan("int8", "model")),  # a 24 GB Ampere card
        (FLUX1_DEV, 11 * GB, "fp8", MemoryPlan("none", "group")),  # 12 GB: a block at a time
        (QWEN_IMAGE, 79 * GB, "fp8", MemoryPlan("none", "none")),
        (QWEN_IMAGE, 47 * GB, "fp8", MemoryPlan("fp8", "none")),  # 48 GB: quantized, whole
        (QWEN_IMAGE, 23 * GB, "fp8", MemoryPlan("none", "group")),
    ],
)
def test_auto_fits_the_published_models_to_the_cards_people_have(
    sizes, free, weight_only, expected
):
    assert choose("auto", "auto", sizes, free, weight_only=weight_only) == expected


def test_a_setting_fixes_its_half_and_auto_chooses_the_other():
    assert choose("none", "auto", FLUX1_DEV, 23 * GB) == MemoryPlan("none", "group")
    assert choose("auto", "none", FLUX1_DEV, 23 * GB) == MemoryPlan("fp8", "none")
    assert choose("int8", "model", FLUX1_DEV, 79 * GB) == MemoryPlan("int8", "model")
    # A GGUF transformer is quantized already: only where it waits is chosen.
    gguf = FLUX1_DEV | {"transformer": 12.7 * GB}
    assert choose("auto", "auto", gguf, 23 * GB, prequantized=True) == MemoryPlan("none", "model")
    # On a CPU the weights are in RAM already: nothing is offloaded, nothing quantized unasked.
    assert choose("auto", "auto", FLUX1_DEV, None) == MemoryPlan("none", "none")
    assert choose("fp8", "auto", FLUX1_DEV, None) == MemoryPlan("fp8", "none")
    assert MemoryPlan("fp8", "model").label == "fp8 + model offload"
    assert MemoryPlan("none", "group").label == "group offload"
    assert MemoryPlan("none", "none").label == "none"


def test_sizes_come_from_the_headers_at_the_load_dtype(settings):
    folder = settings.models_dir / "checkpoints" / "demo-flux"
    fp32 = component_bytes(folder, 4)
    assert set(fp32) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    assert component_bytes(folder, 2) == {name: size // 2 for name, size in fp32.items()}
    on_disk = sum(f.stat().st_size for f in (folder / "transformer").glob("*.safetensors"))
    assert 0.95 < fp32["transformer"] / on_disk <= 1  # (the header is the rest)


@pytest.mark.parametrize(
    "quantize, weight_class", [("int8", "Int8Tensor"), ("fp8", "Float8Tensor")]
)
def test_weight_only_quantization_runs_close_to_the_full_weights(
    tmp_path, settings, engine, quantize, weight_class
):
    """torchao's weight-only quantization on demo-flux's transformer (on this CPU too): its
    weights are held quantized, the image stays close to the full-precision one, and a LoRA
    still applies over them."""
    from huabu.engine.engine import Engine

    quantized = Engine(Settings(home=settings.home, threads=2, quantize=quantize))
    request = GenerationRequest(
        model="demo-flux", prompt="a red fox", width=64, height=64, steps=4, seed=7
    )
    made = quantized.generate(request)
    model = loaded(quantized, "demo-flux")
    assert model.memory == MemoryPlan(quantize, "none")
    weight = model.txt2img.transformer.transformer_blocks[0].attn.to_q.weight
    assert type(weight).__name__ == weight_class
    assert quantized.cache.memory_plans() == {"demo-flux": quantize}
    full = engine.generate(request).images[0]
    difference = np.abs(pixels(made.images[0]).astype(int) - pixels(full))
    assert 0 < difference.mean() < 3
    lora = request.model_copy(update={"loras": (LoraRef(name="demo-flux-lora"),)})
    with_lora = quantized.generate(lora).images[0]
    assert np.abs(pixels(with_lora).astype(int) - pixels(made.images[0])).max() > 16
    again = quantized.generate(request).images[0]  # the LoRA off: as before it, exactly
    assert pixels(again).tolist() == pixels(made.images[0]).tolist()


@pytest.mark.parametrize(
    "changes, variable",
    [({"offload": "model"}, "HUABU_OFFLOAD"), ({"quantize": "nf4"}, "HUABU_QUANTIZE")],
)
def test_a_cpu_worker_refuses_at_its_start_what_needs_a_gpu(settings, changes, variable):
    from huabu.engine.engine import Engine

    with pytest.raises(WorkerMisconfigured) as refused:
        Engine(Settings(home=settings.home, device="cpu", **changes))
    assert variable in str(refused.value)


def test_the_plan_shows_in_the_fleet_view_status_and_metrics(place):
    from huabu.cli import _with_plan
    from huabu.tasks import fleet, metrics

    _, sessions, _ = place
    with sessions.begin() as session:
        fleet.advertise(
            session,
            name="gpu-1",
            host="gpu",
            device="cuda:0",
            kinds=["generate"],
            loaded=["flux1-dev", "demo"],
            loads=2,
            current_task=None,
            memory_plans={"flux1-dev": "fp8 + model offload"},
        )
    with sessions() as session:
        view = fleet.fleet_view(session, stalled_seconds=60)
        snap = metrics.snapshot(session, stalled_seconds=60)
    (worker,) = [w for w in view["workers"] if w["name"] == "gpu-1"]
    assert worker["memory_plans"] == {"flux1-dev": "fp8 + model offload"}
    assert ("gpu-1", "flux1-dev", "fp8 + model offload") in snap.memory_plans
    shown = [_with_plan(name, worker["memory_plans"]) for name in worker["loaded"]]
    assert shown == ["flux1-dev (fp8 + model offload)", "demo"]
