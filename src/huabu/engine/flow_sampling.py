"""The A1111 samplers beyond Euler on a flow-matching model, as Forge and ComfyUI run them.

A flow model predicts a velocity v at noise level sigma, where ``x = (1 - sigma) x0 + sigma
noise``; its denoised estimate is ``x - sigma v``. k-diffusion's samplers only ever ask a model
for its denoised estimate, so they run on a flow model unchanged (ComfyUI's and Forge's
"CONST" model sampling), with two exceptions that use the flow form: ancestral noise is
re-mixed as a rectified flow does (ComfyUI's ``sample_euler_ancestral_RF``, eta 1), and the
schedule is the model's own (the family's shifted sigmas, as its Euler uses them).

Ported from k-diffusion's ``sampling.py`` (Katherine Crowson, MIT licence); the ancestral step
follows the formula of ComfyUI's ``sample_euler_ancestral_RF`` (what Forge and ComfyUI run for
"Euler a" on FLUX). ``euler`` is here to check the loop against diffusers' own Euler.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
    FlowMatchEulerDiscreteSchedulerOutput,
)

from huabu.catalog.families import SCHEDULED

#: model(x, sigma) -> denoised (k-diffusion's denoiser convention).
Model = Callable[[torch.Tensor, float], torch.Tensor]
#: noise() -> one draw shaped like x, each image from its own generator.
NoiseSampler = Callable[[], torch.Tensor]
#: step(i) after step i (from 0): progress, previews and cancellation.
Step = Callable[[int], None]


@torch.no_grad()
def euler(model: Model, x: torch.Tensor, sigmas: list[float], noise, step: Step) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
        step(i)
    return x


@torch.no_grad()
def euler_ancestral(
    model: Model, x: torch.Tensor, sigmas: list[float], noise: NoiseSampler, step: Step
) -> torch.Tensor:
    """Euler ancestral in rectified-flow form (eta 1): step down to ``sigma_down`` along the
    flow, then mix in fresh noise so that the sample sits at ``sigma_next`` again."""
    for i in range(len(sigmas) - 1):
        x = ancestral_step(x, model(x, sigmas[i]), sigmas[i], sigmas[i + 1], noise)
        step(i)
    return x


def ancestral_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float, noise: NoiseSampler
) -> torch.Tensor:
    """One step of ``euler_ancestral`` from ``x`` at ``sigma``, given the model's estimate."""
    if sigma_next == 0:
        return denoised
    sigma_down = sigma_next * sigma_next / sigma  # downstep ratio sigma_next / sigma
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    ratio = sigma_down / sigma
    x = ratio * x + (1 - ratio) * denoised
    return (alpha_next / alpha_down) * x + noise() * renoise


@torch.no_grad()
def heun(model: Model, x: torch.Tensor, sigmas: list[float], noise, step: Step) -> torch.Tensor:
    """Heun's second-order method (Euler on the last step)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, sigma)) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigma_next)) / sigma_next
            x = x + (d + d_2) / 2 * dt
        step(i)
    return x


@torch.no_grad()
def dpm_2(model: Model, x: torch.Tensor, sigmas: list[float], noise, step: Step) -> torch.Tensor:
    """DPM-Solver-2 (k-diffusion's ``sample_dpm_2``): a midpoint in log sigma."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - model(x, sigma)) / sigma
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            sigma_mid = math.exp((math.log(sigma) + math.log(sigma_next)) / 2)
            x_2 = x + d * (sigma_mid - sigma)
            d_2 = (x_2 - model(x_2, sigma_mid)) / sigma_mid
            x = x + d_2 * (sigma_next - sigma)
        step(i)
    return x


@torch.no_grad()
def dpmpp_2m(model: Model, x: torch.Tensor, sigmas: list[float], noise, step: Step) -> torch.Tensor:
    """DPM-Solver++(2M) (k-diffusion's ``sample_dpmpp_2m``)."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        previous = sigmas[i - 1] if i > 0 else None
        x = dpmpp_2m_step(x, denoised, sigmas[i], sigmas[i + 1], previous, old_denoised)
        old_denoised = denoised
        step(i)
    return x


def dpmpp_2m_step(
    x: torch.Tensor,
    denoised: torch.Tensor,
    sigma: float,
    sigma_next: float,
    sigma_previous: float | None,
    old_denoised: torch.Tensor | None,
) -> torch.Tensor:
    """One step of ``dpmpp_2m``: the previous step's estimate (at ``sigma_previous``), where
    there is one, makes it second order."""
    if sigma_next == 0:
        return denoised
    t, t_next = -math.log(sigma), -math.log(sigma_next)
    h = t_next - t
    if old_denoised is not None and sigma_previous is not None:
        r = (t - -math.log(sigma_previous)) / h
        denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    else:
        denoised_d = denoised
    return (sigma_next / sigma) * x - math.expm1(-h) * denoised_d


class SamplerScheduler(FlowMatchEulerDiscreteScheduler):
    """A pipeline's own flow-matching schedule, stepped by ``euler_ancestral``'s or
    ``dpmpp_2m``'s step instead of Euler's: the samplers that ask the model once per step,
    for the pipelines that keep their own loop (SD 3.x, Z-Image, Qwen-Image, FLUX.1
    Kontext). Same arithmetic as the loops above, so FLUX.1's images are the loop's."""

    sampler = "DPM++ 2M"
    #: shape -> a draw of that shape, each image from its own generator (Euler a's noise).
    noise: Callable[[torch.Size], torch.Tensor] | None = None
    _old_denoised: torch.Tensor | None = None

    @classmethod
    def of(cls, config: Any, sampler: str, generators: list[torch.Generator]) -> SamplerScheduler:
        if sampler == "Euler" or sampler not in SCHEDULED:  # (catalog.families.fit refuses it)
            raise ValueError(f"{sampler!r} is not a sampler a scheduler steps")
        scheduler = cls.from_config(config)
        scheduler.sampler = sampler

        def noise(shape: torch.Size) -> torch.Tensor:
            return torch.stack(
                [torch.randn(shape[1:], generator=g, dtype=torch.float32) for g in generators]
            )

        scheduler.noise = noise
        return scheduler

    def step(self, model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        i = self.step_index
        sigma, sigma_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        x = sample.to(torch.float32)
        denoised = x - sigma * model_output.to(torch.float32)
        if self.sampler == "Euler a":
            draw, shape, device = self.noise, x.shape, x.device
            assert draw is not None
            x = ancestral_step(x, denoised, sigma, sigma_next, lambda: draw(shape).to(device))
        else:
            previous = float(self.sigmas[i - 1]) if self._old_denoised is not None else None
            x = dpmpp_2m_step(x, denoised, sigma, sigma_next, previous, self._old_denoised)
            self._old_denoised = denoised
        self._step_index += 1
        prev_sample = x.to(model_output.dtype)
        if not return_dict:
            return (prev_sample,)
        return FlowMatchEulerDiscreteSchedulerOutput(prev_sample=prev_sample)


#: The A1111 names that run on a flow model, and their sampler ("Euler" runs through the
#: diffusers pipeline itself: see ``engine.flow``).
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "Euler a": euler_ancestral,
    "Heun": heun,
    "DPM2": dpm_2,
    "DPM++ 2M": dpmpp_2m,
}
