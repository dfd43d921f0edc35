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

import torch

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
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            sigma_down = sigma_next * sigma_next / sigma  # downstep ratio sigma_next / sigma
            alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
            renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * denoised
            x = (alpha_next / alpha_down) * x + noise() * renoise
        step(i)
    return x


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
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_next)
            h = t_next - t
            if old_denoised is not None:
                r = (t - -math.log(sigmas[i - 1])) / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            else:
                denoised_d = denoised
            x = (sigma_next / sigma) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
        step(i)
    return x


#: The A1111 names that run on a flow model, and their sampler ("Euler" runs through the
#: diffusers pipeline itself: see ``engine.flow``).
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "Euler a": euler_ancestral,
    "Heun": heun,
    "DPM2": dpm_2,
    "DPM++ 2M": dpmpp_2m,
}
