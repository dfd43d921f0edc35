"""Engine benchmark: overhead against bare diffusers, and memory across checkpoint switches.

    .venv/bin/python bench/engine.py [--size 64] [--steps 20] [--runs 7]

(1) huabu's ``Engine.generate`` time ÷ a bare ``StableDiffusionPipeline(...)`` call on the same
    request (same weights, sampler, size, steps, seed; target ≤ 1.03).
(2) The same for FLUX.1 (demo-flux, Euler through the pipeline, distilled guidance 3.5)
    against a bare ``FluxPipeline(...)`` call, and for its k-loop sampler DPM++ 2M against the
    pipeline's Euler (same model calls per step: the loop's own cost; target ≤ 1.03 both).
(3) Each other flow family's demo against its bare pipeline on the same request: FLUX.1
    Kontext (an edit of a 64² image), FLUX.2 [klein] and [dev], SD 3.x, Z-Image, Qwen-Image and
    Qwen-Image-Edit (an edit; their defaults: true CFG with the negative prompt on SD 3 and
    Qwen-Image; target ≤ 1.03 each), and the scheduled DPM++ 2M on SD 3 against its pipeline's
    Euler (target ≤ 1.03).
(3b) demo-flux loaded from its split files (the transformer alone in BFL's layout; as Q8_0
    GGUF) and with HUABU_QUANTIZE=int8/fp8, each against the folder as loaded (no target: what
    each costs on this device).
(4) RSS while switching 10 times between two checkpoints with a one-slot pipeline cache
    (target: the last switch ≤ 5 % above the second).
Uses the demo model under a temporary HUABU_HOME; prints ratios, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import (
    EulerAncestralDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    FluxKontextPipeline,
    FluxPipeline,
    QwenImageEditPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    ZImagePipeline,
)
from PIL import Image
from transformers import AutoTokenizer

from huabu import demos
from huabu.engine import quiet_libraries
from huabu.engine.engine import Engine
from huabu.engine.vision_prompts import VisionPrompts
from huabu.native import GenerationRequest, ImageRef
from huabu.settings import Settings


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_pair(first, second, runs: int) -> tuple[float, float]:
    """Median times of two callables, interleaved so drift (heat, caches) hits both alike."""
    first(), second()  # warm-up
    a, b = [], []
    for _ in range(runs):
        for fn, samples in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def report(
    first: tuple[str, float], second: tuple[str, float], target: float | None = 1.03
) -> None:
    """Two medians (seconds) and their ratio, as every comparison here prints them (``target``
    None: a cost to know, with no goal)."""
    width = max(len(first[0]), len(second[0]), len("ratio"))
    for name, seconds in (first, second):
        print(f"  {name:<{width}} {seconds * 1000:8.1f} ms")
    goal = f"(target <= {target})" if target is not None else "(no target)"
    print(f"  {'ratio':<{width}} {first[1] / second[1]:8.3f}   {goal}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="huabu-bench-"))
    settings = Settings(home=home)
    demos.build(settings)
    quiet_libraries()
    torch.set_num_threads(torch.get_num_threads())

    request = GenerationRequest(
        model="demo",
        prompt="a red fox in the snow",
        negative_prompt="blurry",
        sampler="Euler a",
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance=7.0,
        seed=42,
    )
    engine = Engine(settings)

    bare = StableDiffusionPipeline.from_pretrained(
        settings.models_dir / "checkpoints" / "demo",
        safety_checker=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    bare.set_progress_bar_config(disable=True)
    bare.scheduler = EulerAncestralDiscreteScheduler.from_config(
        bare.scheduler.config, timestep_spacing="linspace"
    )

    def bare_call():
        return bare(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            generator=torch.Generator("cpu").manual_seed(42),
        ).images

    huabu_s, bare_s = timed_pair(lambda: engine.generate(request), bare_call, args.runs)
    print(
        f"engine overhead @ {args.size}x{args.size}, {args.steps} steps, Euler a "
        f"(median of {args.runs}, {torch.get_num_threads()} threads)"
    )
    report(("huabu engine", huabu_s), ("bare diffusers", bare_s))

    flux_engine(engine, settings, args)
    other_flow_families(engine, settings, args)
    flux_layouts_and_memory(settings, args)

    switching = Engine(settings.model_copy(update={"pipeline_cache_size": 1}))
    small = request.model_copy(update={"steps": 2})
    samples = []
    for i in range(10):
        switching.generate(small.model_copy(update={"model": ("demo", "demo-single")[i % 2]}))
        samples.append(rss_mib())
    print(
        "RSS across 10 checkpoint switches (cache size 1), MiB: "
        + " ".join(f"{s:.0f}" for s in samples)
    )
    print(f"  growth last/second {samples[-1] / samples[1]:8.3f}   (target <= 1.05)")


def flux_engine(engine: Engine, settings: Settings, args) -> None:
    request = GenerationRequest(
        model="demo-flux",
        prompt="a red fox in the snow",
        width=args.size,
        height=args.size,
        steps=args.steps,
        seed=42,
    )
    bare = FluxPipeline.from_pretrained(
        settings.models_dir / "checkpoints" / "demo-flux", local_files_only=True
    )
    bare.set_progress_bar_config(disable=True)

    def bare_call():
        return bare(
            prompt=request.prompt,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=3.5,
            generator=torch.Generator("cpu").manual_seed(42),
        ).images

    huabu_s, bare_s = timed_pair(lambda: engine.generate(request), bare_call, args.runs)
    print(f"FLUX.1 (demo-flux) @ {args.size}x{args.size}, {args.steps} steps, Euler")
    report(("huabu engine", huabu_s), ("bare diffusers", bare_s))
    looped = request.model_copy(update={"sampler": "DPM++ 2M"})
    loop_s, euler_s = timed_pair(
        lambda: engine.generate(looped), lambda: engine.generate(request), args.runs
    )
    report(("DPM++ 2M (huabu's loop)", loop_s), ("Euler (the pipeline's)", euler_s))


def other_flow_families(engine: Engine, settings: Settings, args) -> None:
    """Each demo as the engine runs it, against its bare pipeline given what the engine
    gives it (guidance as each family's pipeline counts it: see ``engine.flow``)."""
    source = Image.new("RGB", (args.size, args.size), (220, 30, 30))
    prompt, negative = "a red fox in the snow", "blurry"
    edit = {"init_image": ImageRef(key="x")}
    cases = [
        ("demo-flux-kontext", FluxKontextPipeline.from_pretrained, edit,
         {"image": source, "guidance_scale": 2.5, "_auto_resize": False,
          "max_area": args.size * args.size}),
        ("demo-flux2-klein", Flux2KleinPipeline.from_pretrained, {}, {"guidance_scale": 1.0}),
        ("demo-flux2", _flux2_dev, {}, {"guidance_scale": 4.0}),
        ("demo-sd3", StableDiffusion3Pipeline.from_pretrained, {"negative_prompt": negative},
         {"negative_prompt": negative, "guidance_scale": 3.5}),
        ("demo-z-image", ZImagePipeline.from_pretrained, {}, {"guidance_scale": 0.0}),
        ("demo-qwen-image", QwenImagePipeline.from_pretrained, {"negative_prompt": negative},
         {"negative_prompt": negative, "true_cfg_scale": 4.0}),
        ("demo-qwen-image-edit", _qwen_edit, edit,
         {"image": source, "negative_prompt": " ", "true_cfg_scale": 4.0}),
    ]  # fmt: skip
    for name, load, native, bare_extra in cases:
        request = GenerationRequest(
            model=name,
            prompt=prompt,
            width=args.size,
            height=args.size,
            steps=args.steps,
            seed=42,
            **native,
        )
        bare = load(settings.models_dir / "checkpoints" / name, local_files_only=True)
        bare.set_progress_bar_config(disable=True)
        image = source if "init_image" in native else None

        def bare_call(bare=bare, bare_extra=bare_extra):
            return bare(
                prompt=prompt,
                width=args.size,
                height=args.size,
                num_inference_steps=args.steps,
                generator=torch.Generator("cpu").manual_seed(42),
                **bare_extra,
            ).images

        def huabu_call(request=request, image=image):
            return engine.generate(request, init_image=image)

        huabu_s, bare_s = timed_pair(huabu_call, bare_call, args.runs)
        print(f"{name} @ {args.size}x{args.size}, {args.steps} steps, Euler")
        report(("huabu engine", huabu_s), ("bare diffusers", bare_s))
    euler = GenerationRequest(
        model="demo-sd3",
        prompt=prompt,
        width=args.size,
        height=args.size,
        steps=args.steps,
        seed=42,
    )
    scheduled = euler.model_copy(update={"sampler": "DPM++ 2M"})
    dpm_s, euler_s = timed_pair(
        lambda: engine.generate(scheduled), lambda: engine.generate(euler), args.runs
    )
    report(("demo-sd3 DPM++ 2M (scheduled)", dpm_s), ("demo-sd3 Euler (the pipeline's)", euler_s))


def _flux2_dev(folder: Path, **kwargs) -> Flux2Pipeline:
    """FLUX.2 [dev] with the tokenizer in its processor folder (as ``engine.flow`` loads it)."""
    pipe = Flux2Pipeline.from_pretrained(folder, tokenizer=None, **kwargs)
    pipe.register_modules(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"))
    return pipe


def _qwen_edit(folder: Path, **kwargs) -> QwenImageEditPipeline:
    base = QwenImagePipeline.from_pretrained(folder, **kwargs)
    return QwenImageEditPipeline(
        **base.components, processor=VisionPrompts.load(folder / "processor")
    )


def flux_layouts_and_memory(settings: Settings, args) -> None:
    """demo-flux from its split files and quantized, each against the folder, in one engine
    per setting (their times include nothing but generating: the models are loaded first)."""

    def request(model: str) -> GenerationRequest:
        return GenerationRequest(
            model=model, prompt="a red fox in the snow", width=args.size, height=args.size,
            steps=args.steps, seed=42,
        )  # fmt: skip

    engine = Engine(settings)
    folder = lambda: engine.generate(request("demo-flux"))  # noqa: E731
    for name in ("demo-flux-single", "demo-flux-gguf"):
        split_s, folder_s = timed_pair(
            lambda name=name: engine.generate(request(name)), folder, args.runs
        )
        print(f"{name} @ {args.size}x{args.size}, {args.steps} steps")
        report((name, split_s), ("demo-flux folder", folder_s), target=None)
    for quantize in ("int8", "fp8"):
        quantized = Engine(Settings(home=settings.home, quantize=quantize))
        run = lambda quantized=quantized: quantized.generate(request("demo-flux"))  # noqa: E731
        quantized_s, full_s = timed_pair(run, folder, args.runs)
        print(f"demo-flux, HUABU_QUANTIZE={quantize}")
        report((quantize, quantized_s), ("as loaded", full_s), target=None)


if __name__ == "__main__":
    main()
