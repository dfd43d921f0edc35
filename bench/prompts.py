"""Prompt syntax benchmark: what prompt editing, alternation and AND cost per step.

    .venv/bin/python bench/prompts.py [--size 64] [--steps 20] [--runs 7]

On the SD demo (and its SDXL demo), median seconds per sampling step of a plain prompt against
the same prompt with editing (``[fox:cat:0.5]``), alternation (``[fox|cat]``) and ``AND`` (two
parts: the UNet runs three times a step instead of twice, so about 1.5× is its arithmetic, not
overhead); each through diffusers' loop (Euler) and huabu's k-diffusion loop (DPM++ 2S a).
The prompt reading (encoding every text of the schedule) is outside the steps and reported
apart. On the tiny demos a step is a few milliseconds, so (1) carries the machine's noise; (2)
measures the hooks alone: the UNet called with the same inputs, with and without the editing
prompt's hooks, interleaved, the best of several rounds (goal: the hooks' cost < 2 % of a
step). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from huabu.demos import sd, xl
from huabu.engine.engine import Engine
from huabu.engine.prompt_hooks import Calls, following
from huabu.engine.prompts import condition
from huabu.native import GenerationRequest
from huabu.settings import Settings

PROMPTS = {
    "plain": "a red fox in the snow, forest, morning light",
    "editing": "a red [fox:cat:0.5] in the snow, forest, morning light",
    "alternation": "a red [fox|cat] in the snow, forest, morning light",
    "AND": "a red fox in the snow, forest AND morning light :0.8",
}


def per_step(
    engine: Engine, requests: dict[str, GenerationRequest], runs: int
) -> dict[str, tuple[float, float]]:
    """Each request's (median sampling seconds per step, median prompt-reading seconds) over
    ``runs``, the requests interleaved run by run (the machine's drift hits them alike)."""
    for request in requests.values():  # warm: loaded, the first call's allocations made
        engine.generate(request)
    samples: dict[str, list[float]] = {name: [] for name in requests}
    reads: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(runs):
        for name, request in requests.items():
            result = engine.generate(request)
            samples[name].append(result.timings.sample / request.steps)
            reads[name].append(result.timings.prompt)
    return {
        name: (statistics.median(samples[name]), statistics.median(reads[name]))
        for name in requests
    }


class _Echo(torch.nn.Module):
    """A stand-in UNet that returns its sample: calling it costs only the call itself."""

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None):
        return (sample,)


def _per_call(module, latents, timestep, context, added, calls: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for _ in range(calls):
            module(latents, timestep, encoder_hidden_states=context, added_cond_kwargs=added)
    return (time.perf_counter() - started) / calls


def hook_cost(engine: Engine, model_name: str, size: int, rounds: int = 7) -> tuple[float, float]:
    """(seconds per plain UNet call at ``size``², seconds the editing prompt's hooks add to a
    call): the hooks timed on a stand-in that does nothing else, many calls a round (a
    UNet call's own noise is larger than the hooks)."""
    with engine.cache.lease(model_name) as model:
        unet = model.components["unet"]
        edited = condition(
            model.prompt_encoder, PROMPTS["editing"], "blurry", clip_skip=1, steps=20
        )
        latents = torch.randn(2, unet.config.in_channels, size // 8, size // 8)
        context = torch.cat([edited.negative_embeds, edited.embeds])
        added = None
        if edited.pooled is not None:
            width = unet.config.projection_class_embeddings_input_dim - edited.pooled.shape[-1]
            ids = torch.tensor([[size, size, 0, 0, size, size]] * 2, dtype=torch.float32)
            added = {
                "text_embeds": torch.cat([edited.negative_pooled, edited.pooled]),
                "time_ids": ids[:, : width // unet.config.addition_time_embed_dim],
            }
        timestep = torch.tensor(500)
        call = statistics.median(
            _per_call(unet, latents, timestep, context, added, 10) for _ in range(rounds)
        )
        echo, bare, hooked = _Echo(), [], []
        for _ in range(rounds):
            bare.append(_per_call(echo, latents, timestep, context, added, 2000))
            with following(echo, edited.timeline, Calls(), 1):
                hooked.append(_per_call(echo, latents, timestep, context, added, 2000))
        return call, min(hooked) - min(bare)


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
                requests = {
                    name: GenerationRequest(
                        model=model,
                        prompt=prompt,
                        negative_prompt="blurry",
                        width=args.size,
                        height=args.size,
                        steps=args.steps,
                        seed=7,
                        sampler=sampler,
                    )
                    for name, prompt in PROMPTS.items()
                }
                timed = per_step(engine, requests, args.runs)
                base = timed["plain"][0]
                for name, (step, read) in timed.items():
                    print(
                        f"{model:8} {sampler:11} {name:12} {step:9.5f} {step / base:8.3f} "
                        f"{read:8.4f}"
                    )
        print("\n(2) the editing prompt's hooks against one UNet call (CFG batch of 2)")
        print(f"{'model':8} {'size':>5} {'call ms':>9} {'hooks µs':>9} {'÷ call':>8}")
        for model in ("demo", "demo-xl"):
            for size in (args.size, 4 * args.size):
                call, cost = hook_cost(engine, model, size)
                print(f"{model:8} {size:5} {call * 1e3:9.3f} {cost * 1e6:9.1f} {cost / call:8.2%}")


if __name__ == "__main__":
    main()
