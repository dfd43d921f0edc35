"""Prompts with images for Qwen2.5-VL (Qwen-Image-Edit's text encoder), without torchvision.

transformers' ``Qwen2VLProcessor`` will not construct without a video processor, and its
video processor needs torchvision, which huabu does not install. What the edit pipelines ask
of it is small: the images cut into patches (transformers' PIL image processor does that),
and each ``<|image_pad|>`` in the text repeated once per merged patch of its image, then the
text tokenized. ``VisionPrompts`` does exactly that, reading the same ``processor/`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, BatchFeature
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE_TOKEN = "<|image_pad|>"


class VisionPrompts:
    """Called as the edit pipelines call their ``processor``."""

    def __init__(self, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, folder: Path) -> VisionPrompts:
        """From a diffusers folder's ``processor/`` (preprocessor_config.json and the
        tokenizer's files)."""
        return cls(
            Qwen2VLImageProcessorPil.from_pretrained(str(folder)),
            AutoTokenizer.from_pretrained(str(folder)),
        )

    def save_pretrained(self, folder: str | Path) -> None:
        self.image_processor.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))

    def __call__(
        self,
        text: list[str],
        images: Any = None,
        padding: bool = True,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        texts = list(text)
        vision: dict[str, Any] = {}
        if images is not None:
            vision = dict(self.image_processor(images=images, return_tensors=return_tensors))
            merged = self.image_processor.merge_size**2
            counts = iter(int(grid.prod()) // merged for grid in vision["image_grid_thw"])
            for index, line in enumerate(texts):
                pieces = line.split(IMAGE_TOKEN)
                texts[index] = pieces[0] + "".join(
                    IMAGE_TOKEN * next(counts) + piece for piece in pieces[1:]
                )
        tokens = self.tokenizer(texts, padding=padding, return_tensors=return_tensors)
        return BatchFeature({**tokens, **vision})
