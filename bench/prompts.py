"""Prompt syntax benchmark: what prompt editing, alternation and AND cost per step.

    .venv/bin/python bench/prompts.py [--size 64] [--steps 20] [--runs 7]

On the SD demo (and its SDXL demo), median seconds per sampling step of a plain prompt against
the same prompt with editing (``[fox:cat:0.5]``), alternation (``[fox|cat]``) and ``AND`` (two
parts: the UNet runs three times a step instead of twice, so about 1.5× is its arithmetic, not
overhead); each through diffusers' loop (Euler) and huabu's k-diffusion loop (DPM++ 2S a).
Goal: editing and alternation within 2 % of a plain step. The prompt reading (encoding every
text of the schedule) is outside the steps and reported apart. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from huabu.demos import sd, xl
from huabu.engine.engine import Engine
from huabu.native import GenerationRequest
from huabu.settings import Settings

PROMPTS = {
    "plain": "a red fox in the snow, forest, morning light",
    "editing": "a red [fox:cat:0.5] in the snow, forest, morning light",
    "alternation": "a red [fox|cat] in the snow, forest, morning light",
    "AND": "a red fox in the snow, forest AND morning light :0.8",
}


def per_step(engine: Engine, request: GenerationRequest, runs: int) -> tuple[float, float]:
    """(median sampling seconds per step, median prompt-reading seconds) over ``runs``."""
    engine.generate(request)  # warm: the pipeline loaded, the first call's allocations made
    samples, prompts = [], []
    for _ in range(runs):
        result = engine.generate(request)
        samples.append(result.timings.sample / request.steps)
        prompts.append(result.timings.prompt)
    return statistics.median(samples), statistics.median(prompts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home))
        sd.build(settings.models_dir)
        xl.build(settings.models_dir)
        engine = Engine(settings)
        print(f"{args.size}², {args.steps} steps, medians of {args.runs}")
        print(
            f"{'model':8} {'sampler':11} {'prompt':12} {'s/step':>9} {'÷ plain':>8} {'read s':>8}"
        )
        for model in ("demo", "demo-xl"):
            for sampler in ("Euler", "DPM++ 2S a"):
                base = None
                for name, prompt in PROMPTS.items():
                    request = GenerationRequest(
                        model=model,
                        prompt=prompt,
                        negative_prompt="blurry",
                        width=args.size,
                        height=args.size,
                        steps=args.steps,
                        seed=7,
                        sampler=sampler,
                    )
                    step, read = per_step(engine, request, args.runs)
                    base = base or step
                    print(
                        f"{model:8} {sampler:11} {name:12} {step:9.5f} {step / base:8.3f} "
                        f"{read:8.4f}"
                    )


if __name__ == "__main__":
    main()
