"""Speed of one worker's engine: batching, torch.compile, LoRA hot-swap.

    .venv/bin/python bench/speed.py [--size 256] [--steps 20] [--runs 3] [--backend inductor]

On the demo model (CPU here; ``bench/gpu.py`` runs the same on a full-size SD 1.5 when a
device is lent), measured side by side in one run:
(1) images/s of 8 requests in one batch (``Engine.generate_batch``) ÷ one at a time;
(2) it/s with HUABU_COMPILE (the engine compiles and warms up when the model loads; the
    compile time and a restarted process's time from its disk cache are reported) ÷ eager;
(3) a LoRA swap on the compiled model: a generation that swaps LoRAs in ÷ one that reuses
    them, and the graphs compiled while swapping (the goal is none);
(4) live previews: the cost of one (Approx cheap and its PNG) at 512² and 1024² latents,
    and a generation that makes one at every step ÷ one that makes none.
Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from huabu import demos
from huabu.engine.engine import Engine
from huabu.native import GenerationRequest, LoraRef
from huabu.settings import Settings

PROMPTS = ["a red fox in the snow", "a lighthouse at night", "a bowl of ramen",
           "a city street in the rain", "a cat on a windowsill", "mountains at dawn",
           "a sailing boat", "a field of sunflowers"]  # fmt: skip


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def batching(settings: Settings, model: str, size: int, steps: int, runs: int) -> None:
    engine = Engine(settings)
    requests = [
        GenerationRequest(
            model=model, prompt=p, seed=i, width=size, height=size, steps=steps, sampler="Euler a"
        )
        for i, p in enumerate(PROMPTS)
    ]
    nothing = [lambda step, total, preview: None] * 8
    never = [lambda: False] * 8
    engine.generate(requests[0])  # load and warm
    alone = median_time(lambda: [engine.generate(r) for r in requests], runs)
    batched = median_time(lambda: engine.generate_batch(requests, nothing, never), runs)
    print(
        f"(1) {size}², {steps} steps, 8 requests: one at a time {8 / alone:.2f} images/s, "
        f"batched {8 / batched:.2f} images/s, ratio {alone / batched:.2f}",
        flush=True,
    )


def write_loras(settings: Settings, model: str) -> list[str]:
    """Two LoRAs of the same layers and rank for ``model`` (random, rank 16)."""
    engine = Engine(settings)
    names = []
    with engine.cache.lease(model) as loaded:
        for seed in (1, 2):
            name = f"bench-lora-{seed}"
            state = demos.sd.build_lora(loaded.txt2img, seed=seed)
            save_file(state, str(settings.models_dir / "loras" / f"{name}.safetensors"))
            names.append(name)
    return names


def compiled(
    settings: Settings, model: str, size: int, steps: int, runs: int, backend: str
) -> None:
    eager = Engine(settings)
    request = GenerationRequest(
        model=model,
        prompt="a red fox",
        seed=1,
        width=size,
        height=size,
        steps=steps,
        sampler="Euler a",
    )
    on = settings.model_copy(update={"compile": True, "compile_backend": backend})
    fast = Engine(on)
    began = time.perf_counter()
    fast.generate(request)  # load, compile, warm-up at the native size, then this size
    first = time.perf_counter() - began
    eager.generate(request)
    slow_s = median_time(lambda: eager.generate(request), runs)
    fast_s = median_time(lambda: fast.generate(request), runs)
    print(
        f"(2) {size}², {steps} steps, Euler a: eager {steps / slow_s:.2f} it/s, compiled "
        f"({backend}) {steps / fast_s:.2f} it/s, ratio {slow_s / fast_s:.2f}; the first "
        f"generation (load + compile) took {first:.1f} s",
        flush=True,
    )
    restart = _first_generation_elsewhere(on, model, size, steps)
    print(
        f"    a new process with the compile cache on disk: first generation {restart:.1f} s",
        flush=True,
    )
    a, b = write_loras(settings, model)
    one = (LoraRef(name=a, weight=1.0),)
    two = (LoraRef(name=b, weight=0.7),)
    for loras in (one, two, ()):  # the LoRA slot and the LoRA on/off graphs, once
        fast.generate(request.model_copy(update={"loras": loras}))
    before = graphs()
    turn = iter(range(1_000_000))

    def swapping():  # each call swaps the other LoRA in
        fast.generate(request.model_copy(update={"loras": one if next(turn) % 2 else two}))

    def reusing():
        fast.generate(request.model_copy(update={"loras": two}))

    swap_s, same_s = median_time(swapping, runs), median_time(reusing, runs)
    print(
        f"(3) LoRA hot-swap: a generation that swaps {swap_s:.3f} s, one that reuses "
        f"{same_s:.3f} s: the swap costs {100 * (swap_s - same_s) / same_s:+.1f} % of a "
        f"generation; graphs compiled while swapping: {graphs() - before}",
        flush=True,
    )


def _first_generation_elsewhere(settings: Settings, model: str, size: int, steps: int) -> float:
    code = (
        "import time; began = time.perf_counter()\n"
        "from huabu.engine.engine import Engine\n"
        "from huabu.native import GenerationRequest\n"
        "from huabu.settings import Settings\n"
        f"Engine(Settings()).generate(GenerationRequest(model={model!r}, prompt='a fox', "
        f"width={size}, height={size}, steps={steps}, sampler='Euler a'))\n"
        "print(time.perf_counter() - began)\n"
    )
    env = os.environ | {
        "HUABU_HOME": str(settings.home),
        "HUABU_COMPILE": "true",
        "HUABU_COMPILE_BACKEND": settings.compile_backend,
        "HUABU_DEVICE": settings.device,
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return float(out.stdout.strip().splitlines()[-1])


def previews(settings: Settings, model: str, size: int, steps: int, runs: int) -> None:
    from huabu.engine.previews import LatentPreview

    for side in (512, 1024):
        latents = LatentPreview(sdxl=side == 1024)
        latents.saw(torch.randn(1, 4, side // 8, side // 8))
        each = median_time(latents.at(0), 50)
        print(f"(4) one live preview of a {side}² image: {each * 1000:.2f} ms", flush=True)
    engine = Engine(settings)
    request = GenerationRequest(
        model=model,
        prompt=PROMPTS[0],
        seed=1,
        width=size,
        height=size,
        steps=steps,
        sampler="Euler a",
    )
    engine.generate(request)

    def every_step(step, total, preview):
        preview()

    bare = median_time(lambda: engine.generate(request), runs)
    previewed = median_time(lambda: engine.generate(request, on_progress=every_step), runs)
    print(
        f"(4) {size}², {steps} steps, a preview at every step: {previewed:.3f} s against "
        f"{bare:.3f} s without, ratio {previewed / bare:.3f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", default="inductor")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="huabu-speed-"))
    settings = Settings(home=home)
    demos.build(settings)
    batching(settings, "demo", args.size, args.steps, args.runs)
    previews(settings, "demo", args.size, args.steps, args.runs)
    compiled(settings, "demo", args.size, args.steps, args.runs, args.backend)


if __name__ == "__main__":
    main()
