"""Live previews: A1111's "Approx cheap" — the newest latents turned into RGB by one linear
map per latent channel (no extra weights, about a millisecond), at the latent size (1/8 of the
output). k-diffusion samplers preview their denoised estimate, as A1111 does; diffusers'
samplers their current latents (noisier early on: the pipelines hand out nothing else).
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


def approx_cheap(latent: torch.Tensor, *, sdxl: bool) -> Image.Image:
    """One image's latent ``[4, h, w]`` (as the UNet sees it: scaled) as an RGB image."""
    coefficients = torch.tensor(_SDXL if sdxl else _SD, dtype=torch.float32)
    rgb = torch.einsum("lxy,lr->rxy", latent.detach().float().cpu(), coefficients)
    pixels = ((rgb * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()), "RGB")


class LatentPreview:
    """The newest latents of one sampling run; ``at(i)`` previews its image ``i`` as PNG."""

    def __init__(self, *, sdxl: bool) -> None:
        self.sdxl = sdxl
        self.latents: torch.Tensor | None = None

    def saw(self, latents: torch.Tensor) -> None:
        self.latents = latents

    def at(self, index: int) -> Preview:
        def png() -> bytes | None:
            latents = self.latents
            if latents is None or latents.shape[0] <= index or latents.shape[1] != 4:
                return None
            out = io.BytesIO()
            approx_cheap(latents[index], sdxl=self.sdxl).save(out, format="PNG")
            return out.getvalue()

        return png
