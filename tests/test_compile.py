"""HUABU_COMPILE: a compiled UNet gives the images eager mode gives, and swapping LoRAs on it
does not recompile.

The engine here compiles with torch.compile's ``eager`` backend: dynamo traces the UNet, guards
its graphs and recompiles exactly as with inductor, but skips inductor's code generation (40 s
per graph on this CPU; ``bench/speed.py`` measures inductor itself)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers import REF, max_difference
from huabu.engine.compiling import is_compiled
from huabu.engine.engine import Engine
from huabu.native import IpAdapterRef, LoraRef
from huabu.settings import Settings

pytestmark = pytest.mark.slow  # dynamo traces a UNet graph in about 3 s

LORA = "demo-lora"


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Engine:
    """The eager engine to compare with: this module's own, since the LoRAs here (one with
    text-encoder weights) would stay loaded in the shared one."""
    return Engine(settings)


@pytest.fixture(scope="module")
def compiled(settings: Settings) -> Engine:
    torch._dynamo.reset()
    return Engine(settings.model_copy(update={"compile": True, "compile_backend": "eager"}))


@pytest.fixture(scope="module")
def more_loras(settings: Settings, compiled: Engine):
    """Two more LoRAs for the demo: another rank-4 one of the same layers (swaps in place),
    and a rank-8 one that also has text-encoder weights."""
    from peft import LoraConfig, get_peft_model_state_dict

    from huabu.demos.sd import build_lora

    folder = settings.models_dir / "loras"
    with compiled.cache.lease("demo") as model:
        pipe = model.txt2img
        save_file(build_lora(pipe, seed=7), str(folder / "compile-b.safetensors"))
        torch.manual_seed(8)
        state = {}
        for prefix, part, targets in (
            ("unet", pipe.unet, ["to_q", "to_k", "to_v", "to_out.0"]),
            ("text_encoder", pipe.text_encoder, ["q_proj", "k_proj", "v_proj", "out_proj"]),
        ):
            config = LoraConfig(r=8, lora_alpha=4, init_lora_weights=False, target_modules=targets)
            part.add_adapter(config, adapter_name="build")
            weights = get_peft_model_state_dict(part, adapter_name="build")
            state |= {f"{prefix}.{k}": v.detach().clone() for k, v in weights.items()}
            if prefix == "unet":
                part.delete_adapters("build")
            else:
                from diffusers.utils.peft_utils import delete_adapter_layers

                delete_adapter_layers(part, "build")
        save_file(state, str(folder / "compile-c.safetensors"))
    yield "compile-b", "compile-c"
    for name in ("compile-b", "compile-c"):
        (folder / f"{name}.safetensors").unlink()


def test_compiled_unet_gives_the_eager_images(engine, compiled, small):
    request = small()
    image = compiled.generate(request).images[0]
    with compiled.cache.lease("demo") as model:
        unet = model.txt2img.unet
        assert is_compiled(unet)
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert max_difference(image, engine.generate(request).images[0]) <= 1
    before = graphs()
    compiled.generate(small(seed=99, prompt="another prompt"))
    assert graphs() == before  # same shape, new prompt and seed: no recompile


def test_lora_hot_swap_does_not_recompile(engine, compiled, small, more_loras):
    b, c = more_loras
    cases = [
        (LoraRef(name=LORA, weight=1.0),),
        (LoraRef(name=b, weight=0.8),),
        (LoraRef(name=LORA, weight=0.5), LoraRef(name=b, weight=1.0)),
        (LoraRef(name=c, weight=1.0),),
        (),
    ]
    # First pass: the slots are made (two for the two-LoRA request) and LoRAs on/off compile.
    for loras in cases:
        compiled.generate(small(loras=loras, steps=4))
    with compiled.cache.lease("demo") as model:
        slots = model.loras
        reloads, swaps = slots.reloads, slots.swaps
    settled = graphs()
    for loras in reversed(cases):  # every LoRA now goes where another was: swapped in place
        image = compiled.generate(small(loras=loras, steps=4)).images[0]
        if loras in cases[:2]:  # (the rest check two slots' weights, the text encoder's
            continue  # LoRA and LoRAs off: the cost of an eager comparison is a generation)
        expected = engine.generate(small(loras=loras, steps=4)).images[0]
        assert max_difference(image, expected) <= 1, loras

    assert graphs() == settled
    assert slots.reloads == reloads and slots.swaps > swaps


def test_ip_adapter_runs_on_a_compiled_model(engine, compiled, small):
    """An IP-Adapter (loaded per request) runs uncompiled. The first one on a model changes
    its attention processors for good (one recompile); after that, IP-Adapter requests and
    plain ones alternate without recompiling."""
    red = Image.new("RGB", (64, 64), (220, 20, 20))
    request = small(ip_adapter=IpAdapterRef(name="demo-ip-adapter", image=REF))
    compiled.generate(request, ip_image=red)
    compiled.generate(small())
    settled = graphs()
    for _ in range(2):
        image = compiled.generate(request, ip_image=red).images[0]
        assert max_difference(image, engine.generate(request, ip_image=red).images[0]) <= 1
        plain = compiled.generate(small()).images[0]
        assert max_difference(plain, engine.generate(small()).images[0]) <= 1
    assert graphs() == settled


def test_past_the_recompile_bound_new_shapes_run_uncompiled(engine, settings, compiled, small):
    """The bound counts the UNet's graphs in the whole worker (all its models share the
    UNet's code); the earlier tests here compiled more than one already."""
    bounded = settings.model_copy(
        update={"compile": True, "compile_backend": "eager", "compile_recompiles": 1}
    )
    try:
        worker = Engine(bounded)
        request = small(width=96, height=64)  # a size nothing here has run at
        worker.generate(small())  # load (and warm up)
        before = graphs()
        image = worker.generate(request).images[0]
        assert graphs() == before
        assert max_difference(image, engine.generate(request).images[0]) <= 1
    finally:
        torch._dynamo.config.recompile_limit = settings.compile_recompiles


def test_a_flow_models_repeated_blocks_compile_and_give_the_eager_images(engine, compiled):
    """FLUX.1 and SD 3 (whose transformer does not name its blocks to diffusers): regional
    compilation, each repeated block compiled in place; eager's images (LoRAs too), and a new
    prompt and seed compile nothing."""
    from huabu.demos.flux import DEMO_FLUX, DEMO_FLUX_LORA
    from huabu.demos.sd3 import DEMO_SD3
    from huabu.native import GenerationRequest

    for model in (DEMO_FLUX, DEMO_SD3):
        base = {"model": model, "prompt": "a red fox", "width": 64, "height": 64, "steps": 3}
        request = GenerationRequest(**base, seed=5)
        image = compiled.generate(request).images[0]
        with compiled.cache.lease(model) as loaded:
            blocks = [
                module
                for module in loaded.txt2img.transformer.modules()
                if type(module).__name__.endswith("TransformerBlock")
            ]
            assert blocks and all(is_compiled(block) for block in blocks)
            assert not is_compiled(loaded.txt2img.transformer)  # the blocks, not the whole
        assert max_difference(image, engine.generate(request).images[0]) <= 1
        before = graphs()
        again = GenerationRequest(**(base | {"prompt": "a blue whale"}), seed=6)
        assert (
            max_difference(compiled.generate(again).images[0], engine.generate(again).images[0])
            <= 1
        )
        assert graphs() == before
    lora = GenerationRequest(
        model=DEMO_FLUX,
        prompt="a red fox",
        width=64,
        height=64,
        steps=3,
        seed=5,
        loras=(LoraRef(name=DEMO_FLUX_LORA, weight=0.7),),
    )
    assert max_difference(compiled.generate(lora).images[0], engine.generate(lora).images[0]) <= 1
