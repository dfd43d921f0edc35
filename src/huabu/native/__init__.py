"""The native model: the only shapes below the dialect line.

Every dialect translates its wire format to a :class:`GenerationRequest` (``generation``) or a
:class:`~huabu.native.training.TrainingRequest` (``training``) and renders tasks back.
Validation happens here, once, with errors naming the field.
"""

from huabu.native.generation import (
    MAX_CONTROLNETS,
    MAX_EMBEDDINGS,
    MAX_LORAS,
    MAX_NAME,
    MAX_OFFSET,
    MAX_PROMPT,
    MAX_SEED,
    SAMPLER_NAMES,
    ControlUnit,
    GenerationRequest,
    GenerationResult,
    HiresFix,
    ImageRef,
    InpaintRef,
    IpAdapterRef,
    LoraRef,
    OutputFormat,
    Timings,
    canonical_sampler,
    printable,
)

__all__ = [
    "MAX_CONTROLNETS",
    "MAX_EMBEDDINGS",
    "MAX_LORAS",
    "MAX_NAME",
    "MAX_OFFSET",
    "MAX_PROMPT",
    "MAX_SEED",
    "SAMPLER_NAMES",
    "ControlUnit",
    "GenerationRequest",
    "GenerationResult",
    "HiresFix",
    "ImageRef",
    "InpaintRef",
    "IpAdapterRef",
    "LoraRef",
    "OutputFormat",
    "Timings",
    "canonical_sampler",
    "printable",
]
