"""Live previews: A1111's "Approx cheap" — the newest latents turned into RGB by one linear
map per latent channel (no extra weights, about a millisecond), at the latent size (1/8 of the
output); the flow families' with ComfyUI's maps for their VAEs (FLUX's, SD 3's, Wan 2.1's for
Qwen-Image: 16 channels; FLUX.2's 32). k-diffusion samplers preview their
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
# SD 3's, as ComfyUI's latent_formats.SD3 has them.
_SD3 = [[-0.0922, -0.0175, 0.0749], [0.0311, 0.0633, 0.0954], [0.1994, 0.0927, 0.0458],
        [0.0856, 0.0339, 0.0902], [0.0587, 0.0272, -0.0496], [-0.0006, 0.1104, 0.0309],
        [0.0978, 0.0306, 0.0427], [-0.0042, 0.1038, 0.1358], [-0.0194, 0.0020, 0.0669],
        [-0.0488, 0.0130, -0.0268], [0.0922, 0.0988, 0.0951], [-0.0278, 0.0524, -0.0542],
        [0.0332, 0.0456, 0.0895], [-0.0069, -0.0030, -0.0810], [-0.0596, -0.0465, -0.0293],
        [-0.1448, -0.1463, -0.1189]]  # fmt: skip
_SD3_BIAS = [0.2394, 0.2135, 0.1925]
# Wan 2.1's VAE (Qwen-Image's), as ComfyUI's latent_formats.Wan21 has them.
_WAN = [[-0.1299, -0.1692, 0.2932], [0.0671, 0.0406, 0.0442], [0.3568, 0.2548, 0.1747],
        [0.0372, 0.2344, 0.1420], [0.0313, 0.0189, -0.0328], [0.0296, -0.0956, -0.0665],
        [-0.3477, -0.4059, -0.2925], [0.0166, 0.1902, 0.1975], [-0.0412, 0.0267, -0.1364],
        [-0.1293, 0.0740, 0.1636], [0.0680, 0.3019, 0.1128], [0.0032, 0.0581, 0.0639],
        [-0.1251, 0.0927, 0.1699], [0.0060, -0.0633, 0.0005], [0.3477, 0.2275, 0.2950],
        [0.1984, 0.0913, 0.1861]]  # fmt: skip
_WAN_BIAS = [-0.1835, -0.0868, -0.3360]
# FLUX.2's VAE: its 32 latent channels (the transformer's 128 are them in 2×2 patches), as
# ComfyUI's latent_formats.Flux2 has them.
_FLUX2 = [[0.0058, 0.0113, 0.0073], [0.0495, 0.0443, 0.0836], [-0.0099, 0.0096, 0.0644],
          [0.2144, 0.3009, 0.3652], [0.0166, -0.0039, -0.0054], [0.0157, 0.0103, -0.0160],
          [-0.0398, 0.0902, -0.0235], [-0.0052, 0.0095, 0.0109], [-0.3527, -0.2712, -0.1666],
          [-0.0301, -0.0356, -0.0180], [-0.0107, 0.0078, 0.0013], [0.0746, 0.0090, -0.0941],
          [0.0156, 0.0169, 0.0070], [-0.0034, -0.0040, -0.0114], [0.0032, 0.0181, 0.0080],
          [-0.0939, -0.0008, 0.0186], [0.0018, 0.0043, 0.0104], [0.0284, 0.0056, -0.0127],
          [-0.0024, -0.0022, -0.0030], [0.1207, -0.0026, 0.0065], [0.0128, 0.0101, 0.0142],
          [0.0137, -0.0072, -0.0007], [0.0095, 0.0092, -0.0059], [0.0000, -0.0077, -0.0049],
          [-0.0465, -0.0204, -0.0312], [0.0095, 0.0012, -0.0066], [0.0290, -0.0034, 0.0025],
          [0.0220, 0.0169, -0.0048], [-0.0332, -0.0457, -0.0468], [-0.0085, 0.0389, 0.0609],
          [-0.0076, 0.0003, -0.0043], [-0.0111, -0.0460, -0.0614]]  # fmt: skip
_FLUX2_BIAS = [-0.0329, -0.0718, -0.0851]
#: The flow families' latent maps by the VAE they read.
FLOW_MAPS = {
    "flux": (_FLUX, _FLUX_BIAS),
    "sd3": (_SD3, _SD3_BIAS),
    "wan": (_WAN, _WAN_BIAS),
    "flux2": (_FLUX2, _FLUX2_BIAS),
}


def approx_cheap(latent: torch.Tensor, *, sdxl: bool) -> Image.Image:
    """One image's latent ``[4, h, w]`` (as the UNet sees it: scaled) as an RGB image."""
    return _rgb(latent, _SDXL if sdxl else _SD)


def approx_flow(latent: torch.Tensor, vae: str = "flux") -> Image.Image:
    """One image's latent ``[C, h, w]`` (as the transformer sees it) through the map of its
    ``vae`` (a ``FLOW_MAPS`` key) as an RGB image; a latent of another width (a tiny demo's)
    as the grey of its channels' mean."""
    factors, bias = FLOW_MAPS[vae]
    if latent.shape[0] == len(factors):
        return _rgb(latent, factors, bias)
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
    ``render`` (the flow families', see ``engine.flow.previewer``) turns one image's latents
    (as the pipeline hands them out: FLUX's packed tokens …) into the preview image."""

    def __init__(
        self,
        *,
        sdxl: bool,
        render: Callable[[torch.Tensor], Image.Image] | None = None,
    ) -> None:
        self.sdxl = sdxl
        self.render = render
        self.latents: torch.Tensor | None = None

    def saw(self, latents: torch.Tensor) -> None:
        self.latents = latents

    def at(self, index: int) -> Preview:
        def png() -> bytes | None:
            latents = self.latents
            if latents is None or latents.shape[0] <= index:
                return None
            if self.render is not None:
                image = self.render(latents[index : index + 1])
            elif latents.dim() == 4 and latents.shape[1] == 4:  # SD's (not packed tokens)
                image = approx_cheap(latents[index], sdxl=self.sdxl)
            else:
                return None
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()

        return png
