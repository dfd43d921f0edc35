"""The UNet seen as a k-diffusion denoiser ``D(x, sigma) -> x0``, with classifier-free guidance.

This is how k-diffusion (and A1111) drive a discrete-time eps- or v-prediction model:
``c_in = 1/sqrt(sigma²+1)``, the timestep is the sigma's position on the model's log-sigma
table, and the output is turned into a denoised estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Control:
    """One ControlNet unit for the k-diffusion samplers: the net, its control map as a
    ``[1, 3, H, W]`` tensor in 0–1, its scale, and the part of the schedule it acts on
    (fractions of the way from the first noise level to the last, as diffusers gates it)."""

    net: Any
    image: torch.Tensor
    scale: float
    start: float
    end: float


class Denoiser:
    def __init__(
        self,
        unet,
        alphas_cumprod: torch.Tensor,
        *,
        prediction_type: str,
        embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        guidance: float | torch.Tensor,
        added_cond: dict[str, torch.Tensor] | None = None,
        negative_added_cond: dict[str, torch.Tensor] | None = None,
        on_call: Callable[[], None] = lambda: None,
        on_denoised: Callable[[torch.Tensor], None] = lambda denoised: None,
        keep: tuple[torch.Tensor, torch.Tensor] | None = None,
        controls: tuple[Control, ...] = (),
        image_embeds: list[torch.Tensor] | None = None,
    ) -> None:
        """``keep`` is (latents, mask) for inpainting: where the mask is 0, every denoised
        estimate is replaced by those latents, so only the masked area changes. ``controls``
        add ControlNet residuals; ``image_embeds`` are an IP-Adapter's image embeddings, one
        tensor per adapter, batched as the UNet call is (``[negative, positive]`` with CFG).
        ``guidance`` is one scale, or one per image (a batch of requests)."""
        self.unet = unet
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.prediction_type = prediction_type
        self.guidance = guidance
        self.on_call, self.on_denoised = on_call, on_denoised
        self.embeds, self.negative_embeds = embeds, negative_embeds
        self.added, self.negative_added = added_cond, negative_added_cond
        self.keep = keep
        self.controls = controls
        self.image_embeds = image_embeds
        #: The noise levels the sampler starts and ends at (``_progress`` measures by them).
        self.span: tuple[float, float] | None = None

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        low_value, high_value = self.log_sigmas[low], self.log_sigmas[high]
        w = ((low_value - log_sigma) / (low_value - high_value)).clamp(0, 1)
        return (1 - w) * low + w * high

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        low, high, frac = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[high]).exp()

    def schedule(self, steps: int, karras: bool) -> torch.Tensor:
        """k-diffusion's sigmas for ``steps`` steps, ending with 0."""
        if karras:
            rho = 7.0
            ramp = torch.linspace(0, 1, steps)
            lo, hi = self.sigma_min ** (1 / rho), self.sigma_max ** (1 / rho)
            sigmas = (hi + ramp * (lo - hi)) ** rho
        else:
            t = torch.linspace(len(self.sigmas) - 1, 0, steps)
            sigmas = self.t_to_sigma(t)
        return torch.cat([sigmas, sigmas.new_zeros([1])])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.on_call()
        batch = x.shape[0]
        s = sigma.to(torch.float32).reshape(-1).cpu()
        t = self.sigma_to_t(s).to(x.device)
        s4 = s.to(x.device, x.dtype)[:, None, None, None]
        x_in = x / (s4**2 + 1) ** 0.5

        def per_image(value: torch.Tensor) -> torch.Tensor:
            return value.expand(batch, *value.shape[1:])

        context = per_image(self.embeds)
        added = {k: per_image(v) for k, v in self.added.items()} if self.added else None
        guidance = self.guidance
        use_cfg = float(guidance.max() if isinstance(guidance, torch.Tensor) else guidance) > 1
        if isinstance(guidance, torch.Tensor):
            guidance = guidance.to(x.device, x.dtype)[:, None, None, None]
        if use_cfg:  # one UNet call for [negative × batch, positive × batch]
            x_in, t = torch.cat([x_in, x_in]), torch.cat([t, t])
            context = torch.cat([per_image(self.negative_embeds), context])
            if added is not None and self.negative_added is not None:
                added = {
                    k: torch.cat([per_image(self.negative_added[k]), v]) for k, v in added.items()
                }
        if self.image_embeds is not None:
            added = (added or {}) | {"image_embeds": self.image_embeds}
        residuals = self._control_residuals(x_in, t, context, s, added)
        out = self.unet(
            x_in, t, encoder_hidden_states=context, added_cond_kwargs=added, **residuals
        ).sample
        if use_cfg:
            uncond, cond = out.chunk(2)
            out = uncond + guidance * (cond - uncond)
        if self.prediction_type == "v_prediction":
            denoised = x / (s4**2 + 1) - out * s4 / (s4**2 + 1) ** 0.5
        else:
            denoised = x - out * s4
        if self.keep is not None:
            kept, repaint = self.keep
            denoised = kept * (1 - repaint) + denoised * repaint
        self.on_denoised(denoised)
        return denoised

    def _control_residuals(self, x_in, t, context, sigma: torch.Tensor, added) -> dict[str, Any]:
        """The summed residuals of the ControlNets active at this noise level (an SDXL
        ControlNet takes the UNet's size/crop and pooled-text conditioning too)."""
        if added is not None:
            added = {k: v for k, v in added.items() if k != "image_embeds"} or None
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        done = self._progress(float(sigma[0]))
        for control in self.controls:
            if not control.start <= done <= control.end:
                continue
            image = control.image.to(x_in.device, x_in.dtype).expand(x_in.shape[0], -1, -1, -1)
            d, m = control.net(
                x_in,
                t,
                encoder_hidden_states=context,
                controlnet_cond=image,
                conditioning_scale=control.scale,
                added_cond_kwargs=added,
                return_dict=False,
            )
            down = list(d) if down is None else [a + b for a, b in zip(down, d, strict=True)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _progress(self, sigma: float) -> float:
        """How far along the schedule ``sigma`` is (0 at its first noise level, 1 at its
        last), by log noise level: the samplers that choose their own steps have no index."""
        if self.span is None or self.span[0] <= self.span[1]:
            return 0.0  # unknown, or a one-step schedule: at its start
        high, low = (math.log(v) for v in self.span)
        return min(max((high - math.log(max(sigma, 1e-8))) / (high - low), 0.0), 1.0)


class RefinerSwitch:
    """SDXL's refiner as A1111 switches to it: the base model's denoiser until the part of
    the denoising done, ``(999 − t) / 1000`` at the sigma's timestep ``t``, reaches
    ``switch_at``; the refiner's (its own UNet and conditioning) from there on. Anything else
    a sampler asks of it (noise levels, the schedule) is the base's."""

    def __init__(self, base: Denoiser, refiner: Denoiser, switch_at: float) -> None:
        self.base, self.refiner, self.switch_at = base, refiner, switch_at

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = self.base.sigma_to_t(sigma.to(torch.float32).reshape(-1)[:1].cpu())
        done = (999 - int(t.round())) / 1000
        return (self.refiner if done >= self.switch_at else self.base)(x, sigma)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def noise_sampler(generators: list[torch.Generator], shape: tuple[int, ...], device, dtype):
    """Fresh noise for each image from its own generator (so image i depends on seed + i only)."""

    def sample() -> torch.Tensor:
        return torch.stack(
            [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
        ).to(device, dtype)

    return sample
