"""A1111 sampler names → a fresh diffusers scheduler per request, or a k-diffusion sampler.

Schedulers are stateful and not thread-safe, so every request builds its own from the model's
base scheduler config (cheap: microseconds). The k-diffusion family (Euler, LMS, Heun, DPM2,
DPM++) samples on k-diffusion's sigma schedule, a linspace over the training timesteps, which
diffusers calls ``timestep_spacing="linspace"``; "Karras" swaps in Karras et al.'s sigmas.
DDIM, PLMS and UniPC keep the model's own spacing (``leading`` + offset 1), as A1111 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from huabu.native import SAMPLER_NAMES


@dataclass(frozen=True)
class Sampler:
    """How one A1111 sampler name is realised."""

    name: str
    scheduler: type[SchedulerMixin] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: 'dpm_fast' | 'dpm_adaptive' | 'dpmpp_2s_a': huabu's k-diffusion loop instead of diffusers.
    k_sampler: str | None = None
    karras: bool = False

    def make_scheduler(self, base_config: dict[str, Any], seeds: list[int]) -> SchedulerMixin:
        """A new scheduler for one request whose images use ``seeds``."""
        assert self.scheduler is not None
        options = dict(self.options)
        if self.karras:
            options["use_karras_sigmas"] = True
        if self.scheduler is DPMSolverSDEScheduler:
            # Its Brownian-tree noise is seeded at random unless told: one tree per image seed.
            options["noise_sampler_seed"] = list(seeds)
        return self.scheduler.from_config(base_config, **options)


_K = {"timestep_spacing": "linspace"}


def _table() -> dict[str, Sampler]:
    entries = [
        Sampler("Euler a", EulerAncestralDiscreteScheduler, _K),
        Sampler("Euler", EulerDiscreteScheduler, _K),
        Sampler("LMS", LMSDiscreteScheduler, _K),
        Sampler("LMS Karras", LMSDiscreteScheduler, _K, karras=True),
        Sampler("Heun", HeunDiscreteScheduler, _K),
        Sampler("DPM2", KDPM2DiscreteScheduler, _K),
        Sampler("DPM2 Karras", KDPM2DiscreteScheduler, _K, karras=True),
        Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, _K),
        Sampler("DPM2 a Karras", KDPM2AncestralDiscreteScheduler, _K, karras=True),
        Sampler("DPM++ 2S a", k_sampler="dpmpp_2s_a"),
        Sampler("DPM++ 2S a Karras", k_sampler="dpmpp_2s_a", karras=True),
        Sampler("DPM++ 2M", DPMSolverMultistepScheduler, _K),
        Sampler("DPM++ 2M Karras", DPMSolverMultistepScheduler, _K, karras=True),
        Sampler(
            "DPM++ 2M SDE",
            DPMSolverMultistepScheduler,
            {**_K, "algorithm_type": "sde-dpmsolver++"},
        ),
        Sampler(
            "DPM++ 2M SDE Karras",
            DPMSolverMultistepScheduler,
            {**_K, "algorithm_type": "sde-dpmsolver++"},
            karras=True,
        ),
        Sampler("DPM++ SDE", DPMSolverSDEScheduler, _K),
        Sampler("DPM++ SDE Karras", DPMSolverSDEScheduler, _K, karras=True),
        Sampler("DPM fast", k_sampler="dpm_fast"),
        Sampler("DPM adaptive", k_sampler="dpm_adaptive"),
        Sampler("DDIM", DDIMScheduler, {"set_alpha_to_one": False}),
        Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}),
        Sampler("UniPC", UniPCMultistepScheduler),
    ]
    table = {entry.name: entry for entry in entries}
    assert set(table) == set(SAMPLER_NAMES), set(table) ^ set(SAMPLER_NAMES)
    return table


SAMPLERS: dict[str, Sampler] = _table()
