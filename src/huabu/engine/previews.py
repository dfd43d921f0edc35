"""Live previews: A1111's "Approx cheap" — the newest latents turned into RGB by one linear
map per latent channel (no extra weights, about a millisecond), at the latent size (1/8 of the
output); FLUX's 16 channels with ComfyUI's map for them. k-diffusion samplers preview their
denoised estimate, as A1111 does; diffusers' samplers their current latents (noisier early on:
the pipelines hand out nothing else).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

#: A task's preview, made only when asked for (a progress write decides; see ``worker.runner``).
Preview = Callable[[], "bytes | None"]

# A1111's modules/sd_vae_approx.py ``cheap_approximation``: latent channel → RGB weights.
_SD = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264],
       [-0.184, -0.271, -0.473]]  # fmt: skip
_SDXL = [[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250], [0.1074, 0.0886, -0.0163],
         [-0.3730, -0.2499, -0.2088]]  # fmt: skip
# FLUX's 16 latent channels → RGB, and the offset, as ComfyUI's latent_formats.Flux has them.
_FLUX = [[-0.0346, 0.0244, 0.0681], [0.0034, 0.0210, 0.0687], [0.0275, -0.0668, -0.0433],
         [-0.0174, 0.0160, 0.0617], [0.0859, 0.0721, 0.0329], [0.0004, 0.0383, 0.0115],
         [0.0405, 0.0861, 0.0915], [-0.0236, -0.0185, -0.0259], [-0.0245, 0.0250, 0.1180],
         [0.1008, 0.0755, -0.0421], [-0.0515, 0.0201, 0.0011], [0.0428, -0.0012, -0.0036],
         [0.0817, 0.0765, 0.0749], [-0.1264, -0.0522, -0.1103], [-0.0280, -0.0881, -0.0499],
         [-0.1262, -0.0982, -0.0778]]  # fmt: skip
_FLUX_BIAS = [-0.0329, -0.0718, -0.0851]


def approx_cheap(latent: torch.Tensor, *, sdxl: bool) -> Image.Image:
    """One image's latent ``[4, h, w]`` (as the UNet sees it: scaled) as an RGB image."""
    return _rgb(latent, _SDXL if sdxl else _SD)


def approx_flux(latent: torch.Tensor) -> Image.Image:
    """One FLUX image's latent ``[16, h, w]`` (as the transformer sees it) as an RGB image; a
    latent of another width (a tiny demo's) as the grey of its channels' mean."""
    if latent.shape[0] == len(_FLUX):
        return _rgb(latent, _FLUX, _FLUX_BIAS)
    grey = latent.detach().float().mean(0, keepdim=True).cpu()
    return _rgb(grey, [[1.0, 1.0, 1.0]])


def _rgb(latent: torch.Tensor, factors: list, bias: list | None = None) -> Image.Image:
    coefficients = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("lxy,lr->rxy", latent.detach().float().cpu(), coefficients)
    if bias is not None:
        rgb = rgb + torch.tensor(bias).view(3, 1, 1)
    pixels = ((rgb * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), "RGB")


class LatentPreview:
    """The newest latents of one sampling run; ``at(i)`` previews its image ``i`` as PNG.
    ``unpack`` (FLUX) turns the transformer's packed tokens back into ``[B, C, h, w]``."""

    def __init__(
        self,
        *,
        sdxl: bool,
        unpack: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.sdxl = sdxl
        self.unpack = unpack
        self.latents: torch.Tensor | None = None

    def saw(self, latents: torch.Tensor) -> None:
        self.latents = latents

    def at(self, index: int) -> Preview:
        def png() -> bytes | None:
            latents = self.latents
            if latents is None or latents.shape[0] <= index:
                return None
            if self.unpack is not None:
                image = approx_flux(self.unpack(latents[index : index + 1])[0])
            elif latents.shape[1] == 4:
                image = approx_cheap(latents[index], sdxl=self.sdxl)
            else:
                return None
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()

        return png
