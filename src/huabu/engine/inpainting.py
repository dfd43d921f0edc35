"""Inpainting: which pixels to repaint, what sampling starts from, and pasting the result back.

The mask is white where the image is repainted and black where it is kept, as in A1111. The
steps follow A1111's img2img-with-mask on an ordinary checkpoint:

1. the mask is resized to the output size and blurred by ``blur`` pixels (soft edges);
2. with ``only_masked``, the masked area plus ``padding`` pixels (widened to the output's aspect
   ratio) is cut out and scaled up to the output size, so a small area gets every pixel;
3. with ``fill="fill"``, the repainted area starts from the surrounding colours, not the
   original content;
4. sampling keeps the unmasked latents (the samplers blend them in at every step);
5. the generated image is pasted back over the source through the blurred mask, so pixels
   outside it are the source's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageFilter, ImageOps

from huabu.native import InpaintRef


@dataclass(frozen=True)
class InpaintPlan:
    source: Image.Image  # the source at the output size: what the result is pasted onto
    blurred: Image.Image  # the blurred mask at the output size: how it is pasted
    box: tuple[int, int, int, int] | None  # the cut-out area, with only_masked
    start: Image.Image  # what sampling starts from (output size)
    mask: Image.Image  # the mask sampling uses (output size)

    def latent_mask(self, latents_shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """1 where latents are repainted, 0 where kept; (1, 1, h, w) at the latent size."""
        height, width = latents_shape[-2:]
        small = self.mask.resize((width, height), Image.Resampling.BILINEAR)
        values = torch.frombuffer(bytearray(small.tobytes()), dtype=torch.uint8)
        binary = (values.float() / 255).round().reshape(1, 1, height, width)
        return binary.to(device, dtype)

    def paste(self, generated: Image.Image) -> Image.Image:
        """The final image: the source, with the generated pixels where the mask says."""
        if self.box is not None:
            x1, y1, x2, y2 = self.box
            patch = generated.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS)
            generated = self.source.copy()
            generated.paste(patch, (x1, y1))
        return Image.composite(generated.convert("RGB"), self.source, self.blurred)


def plan(source: Image.Image, mask: Image.Image, inpaint: InpaintRef) -> InpaintPlan:
    """``source`` is already at the output size; ``mask`` is a
    :func:`huabu.images.repaint_mask`."""
    size = source.size
    mask = mask.resize(size, Image.Resampling.LANCZOS)
    if inpaint.blur:
        mask = mask.filter(ImageFilter.GaussianBlur(inpaint.blur))
    blurred = mask
    start, box = source, None
    if inpaint.only_masked:
        box = VaeImageProcessor.get_crop_region(mask, size[0], size[1], pad=inpaint.padding)
        start = source.crop(box).resize(size, Image.Resampling.LANCZOS)
        mask = mask.crop(box).resize(size, Image.Resampling.LANCZOS)
    if inpaint.fill == "fill":
        start = fill(start, mask)
    return InpaintPlan(source, blurred, box, start, mask)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The masked area painted over with ever less blurred copies of what surrounds it
    (A1111's "fill"): the sampler then starts from the neighbourhood's colours."""
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask))
    filled = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")
