"""What several requests need to share one denoising loop (``Engine.generate_batch``).

A batch is one sampling run whose images come from several requests of one batch key
(``GenerationRequest.batch_key``): each image keeps its own seed (its own generator), its own
prompt's conditioning row and its own guidance scale, so it comes out as it would alone, up
to the rounding of batched matrix products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from huabu.engine.previews import LatentPreview, Preview
from huabu.engine.prompts import Conditioning
from huabu.native import GenerationRequest


@dataclass(frozen=True)
class Samples:
    """The images of one sampling run: their seeds, guidance scales and prompt conditioning.
    A single request's images share one conditioning row (``per_prompt`` is its image
    count); a batch of requests has one row per image (``per_prompt`` is 1)."""

    seeds: list[int]
    guidance: list[float]
    conditioning: Conditioning
    per_prompt: int

    @classmethod
    def of(cls, request: GenerationRequest, conditioning: Conditioning) -> Samples:
        return cls(
            request.image_seeds(),
            [request.guidance] * request.n_images,
            conditioning,
            request.n_images,
        )

    @classmethod
    def stacked(cls, requests: Sequence[GenerationRequest], conditionings: list[Any]) -> Samples:
        """The images of ``requests`` in order, each request's conditioning repeated for each
        of its images."""
        counts = [request.n_images for request in requests]

        def rows(field: str) -> torch.Tensor | None:
            values = [getattr(c, field) for c in conditionings]
            if values[0] is None:
                return None
            pairs = zip(values, counts, strict=True)
            return torch.cat([value.expand(n, *value.shape[1:]) for value, n in pairs])

        return cls(
            [seed for request in requests for seed in request.image_seeds()],
            [request.guidance for request in requests for _ in range(request.n_images)],
            Conditioning(
                rows("embeds"), rows("negative_embeds"), rows("pooled"), rows("negative_pooled")
            ),
            1,
        )

    @property
    def scale(self) -> float | torch.Tensor:
        """The guidance scale: one number when the images share it, else one per image."""
        if len(set(self.guidance)) == 1:
            return self.guidance[0]
        return torch.tensor(self.guidance, dtype=torch.float32)


def same_shapes(conditionings: list[Conditioning]) -> list[list[int]]:
    """The indices of ``conditionings`` grouped by the shape of their rows: a prompt longer
    than 75 tokens has more chunks, and rows of different lengths cannot share a batch (A1111
    pads the shorter ones with empty chunks, which changes their images)."""
    groups: dict[tuple, list[int]] = {}
    for index, c in enumerate(conditionings):
        groups.setdefault((tuple(c.embeds.shape), tuple(c.negative_embeds.shape)), []).append(index)
    return list(groups.values())


@contextmanager
def per_image_guidance(unet: Any, samples: Samples) -> Iterator[float]:
    """While a diffusers pipeline runs the batch: each image guided by its own scale.

    The pipelines apply one scale to the whole batch, ``uncond + g·(cond − uncond)``. With
    per-image scales ``g_i`` the UNet's output for the prompt half is moved (in float32) to
    ``uncond + (g_i / g)·(cond − uncond)``, so that the pipeline's own formula with ``g``
    gives each image ``uncond + g_i·(cond − uncond)``. Yields ``g``, for the pipeline."""
    scale = samples.scale
    if not isinstance(scale, torch.Tensor) or float(scale.max()) <= 1:  # no guidance at all
        yield samples.guidance[0]
        return
    first = float(scale[0])
    ratios = (scale / first)[:, None, None, None]

    def hook(module: Any, args: Any, output: Any) -> Any:
        sample = output[0] if isinstance(output, tuple) else output.sample
        uncond, cond = sample.float().chunk(2)
        ratio = ratios.to(sample.device)
        moved = torch.cat([uncond, uncond + ratio * (cond - uncond)]).to(sample.dtype)
        if isinstance(output, tuple):
            return (moved, *output[1:])
        output.sample = moved
        return output

    handle = unet.register_forward_hook(hook)
    try:
        yield first
    finally:
        handle.remove()


def fan_out(
    progress: Sequence[Callable[[int, int, Preview | None], None]],
    cancels: Sequence[Callable[[], bool]],
    image_counts: Sequence[int],
) -> tuple[Callable[[int, int, LatentPreview], None], Callable[[], bool]]:
    """One progress callback that reports to every request of a batch (each previews its own
    first image), and one cancel check that stops the loop only when every request of it
    wants to stop (a request cancelled alone has its images dropped when the loop ends; see
    ``worker.handle_generation``)."""
    firsts = [sum(image_counts[:i]) for i in range(len(image_counts))]

    def on_progress(step: int, total: int, preview: LatentPreview) -> None:
        for report, first in zip(progress, firsts, strict=True):
            report(step, total, preview.at(first))

    def should_cancel() -> bool:
        return all(cancel() for cancel in cancels)

    return on_progress, should_cancel
