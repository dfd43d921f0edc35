"""Samplers no diffusers scheduler implements: DPM fast, DPM adaptive, DPM++ 2S a.

Ported from k-diffusion's ``sampling.py`` (Katherine Crowson, MIT licence), which is what A1111
runs for these names. A1111 calls them with ``eta = 1`` (its default "eta for ancestral
samplers"), so all three add fresh noise each step, drawn from each image's own generator.

``model(x, sigma) -> denoised`` is the k-diffusion denoiser convention; see
:class:`huabu.engine.denoiser.Denoiser` for how the UNet is wrapped into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[], torch.Tensor]
#: progress(fraction done in [0, 1]); may raise to stop sampling.
Progress = Callable[[float], None]


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step from ``sigma_from`` to ``sigma_to``."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model: Model,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: NoiseSampler,
    progress: Progress,
    eta: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S), ancestral (k-diffusion ``sample_dpmpp_2s_ancestral``)."""
    ones = x.new_ones([x.shape[0]])
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * ones)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:  # last step: plain Euler to zero
            x = x + (x - denoised) / sigma * (sigma_down - sigma)
        else:
            t, t_next = -math.log(sigma), -math.log(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (math.exp(-s) / math.exp(-t)) * x - math.expm1(-h * 0.5) * denoised
            denoised_2 = model(x_2, math.exp(-s) * ones)
            x = (math.exp(-t_next) / math.exp(-t)) * x - math.expm1(-h) * denoised_2
        if sigma_next > 0:
            x = x + noise() * sigma_up
        progress((i + 1) / steps)
    return x


class _DPMSolver:
    """DPM-Solver in log-SNR time t = -log(sigma), predicting eps from the denoiser."""

    def __init__(self, model: Model, on_eval: Callable[[], None]) -> None:
        self.model = model
        self.on_eval = on_eval

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return -sigma.log()

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    def eps(self, cache: dict, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = self.sigma(t) * x.new_ones([x.shape[0]])
            cache[key] = (x - self.model(x, sigma)) / self.sigma(t)
            self.on_eval()
        return cache[key]

    def step1(self, x, t, t_next, cache):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        )

    def step3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x
            - self.sigma(t_next) * h.expm1() * eps
            - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        )

    def ancestral_target(self, t, t_next, t_end, eta):
        if not eta:
            return t_next, 0.0
        sigma_down, _ = ancestral_step(float(self.sigma(t)), float(self.sigma(t_next)), eta)
        t_next_ = torch.minimum(t_end, self.t(torch.tensor(sigma_down)))
        sigma_up = (self.sigma(t_next) ** 2 - self.sigma(t_next_) ** 2) ** 0.5
        return t_next_, sigma_up


@torch.no_grad()
def sample_dpm_fast(
    model: Model,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    evaluations: int,
    noise: NoiseSampler,
    progress: Progress,
    eta: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver (fast): a fixed budget of ``evaluations`` model calls in orders 3/2/1."""
    done = 0

    def count() -> None:
        nonlocal done
        done += 1
        progress(min(done / evaluations, 1.0))

    solver = _DPMSolver(model, count)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    m = evaluations // 3 + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    if evaluations % 3 == 0:
        orders = [3] * (m - 2) + [2, 1]
    else:
        orders = [3] * (m - 1) + [evaluations % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_next_, sigma_up = solver.ancestral_target(t, t_next, t_end, eta)
        step = {1: solver.step1, 2: solver.step2, 3: solver.step3}[order]
        x = step(x, t, t_next_, {})
        x = x + sigma_up * noise()
    return x


class _PIDStepSizeController:
    """Step-size control for the adaptive solver (k-diffusion's PID controller)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


#: A safety net: the adaptive solver chooses its own steps; never let it run away.
MAX_ADAPTIVE_EVALUATIONS = 1000


@torch.no_grad()
def sample_dpm_adaptive(
    model: Model,
    x: torch.Tensor,
    sigma_min: float,
    sigma_max: float,
    noise: NoiseSampler,
    progress: Progress,
    eta: float = 1.0,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    accept_safety: float = 0.81,
) -> torch.Tensor:
    """DPM-Solver (adaptive): embedded order 2/3 pairs with error-controlled step size.

    It ignores the requested step count, as in A1111; progress is the fraction of log-SNR time
    covered.
    """
    evaluations = 0

    def count() -> None:
        nonlocal evaluations
        evaluations += 1

    solver = _DPMSolver(model, count)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = _PIDStepSizeController(h_init, 0.0, 1.0, 0.0, 1.5 if eta else order, accept_safety)
    s, x_prev = t_start, x
    while s < t_end - 1e-5 and evaluations < MAX_ADAPTIVE_EVALUATIONS:
        t = torch.minimum(t_end, s + pid.h)
        t_, sigma_up = solver.ancestral_target(s, t, t_end, eta)
        cache: dict = {}
        if order == 2:
            x_low = solver.step1(x, s, t_, cache)
            x_high = solver.step2(x, s, t_, cache)
        else:
            x_low = solver.step2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + sigma_up * noise()
            s = t
            progress(float((s - t_start) / (t_end - t_start)))
    return x
