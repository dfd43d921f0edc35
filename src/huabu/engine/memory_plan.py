"""How a flow model's weights fit the device: ``HUABU_QUANTIZE`` and ``HUABU_OFFLOAD``.

A 12B–20B transformer in bf16 takes 24–41 GB; with its text encoder it fills a 24 GB card
twice over. Each model is planned when it loads: from the weights' sizes (read from the files'
headers, at the dtype they load in) and the device's free memory, ``auto`` takes the first of
these that fits, in this order (fastest first):

    no offload:     as loaded  →  transformer quantized (fp8, else int8)
    model offload:  as loaded  →  quantized     (one component on the GPU at a time)
    group offload:  as loaded  →  quantized     (a block at a time, streamed)

An explicit setting fixes its half of the plan and ``auto`` chooses the other. Quantization is
diffusers' and torchao's weight-only float8/int8 (bitsandbytes' nf4 on CUDA); offloading is
diffusers' own (``enable_model_cpu_offload``, ``enable_group_offload``,
``enable_sequential_cpu_offload``). On a CPU the weights are in RAM already: no offload, and
``auto`` quantizes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from huabu.catalog.checkpoints import CheckpointHeader
from huabu.errors import ModelUnavailable

log = logging.getLogger("huabu.engine")

#: What weights take beyond their bytes once on the device (allocator slack, buffers), and the
#: activations of a 1024² generation.
_SLACK = 1.15
_ACTIVATIONS = 3 * 2**30
#: A weight's bytes after quantization, against bf16's 2.
_QUANTIZED = {"none": 1.0, "fp8": 0.5, "int8": 0.5, "nf4": 0.28}
_OFFLOADS = ("none", "model", "group")
#: What group offloading keeps resident: the blocks in flight (a fraction of the largest part).
_GROUP_RESIDENT = 0.1


@dataclass(frozen=True)
class MemoryPlan:
    quantize: str
    offload: str

    @property
    def label(self) -> str:
        """As the fleet view, ``huabu status`` and /metrics show it: ``fp8 + model offload``."""
        parts = [self.quantize] if self.quantize != "none" else []
        parts += [f"{self.offload} offload"] if self.offload != "none" else []
        return " + ".join(parts) or "none"


def file_bytes(file: Path, itemsize: int, prefix: str = "") -> int:
    """A weights file's bytes (those under the key ``prefix``) once loaded at ``itemsize``
    bytes a weight (from its header: no weight is read); a GGUF file stays as it is."""
    if file.suffix == ".gguf":
        return file.stat().st_size
    count = 0
    shapes = CheckpointHeader.read(file).shapes
    for shape in (v for k, v in shapes.items() if k.startswith(prefix)):
        elements = 1
        for n in shape:
            elements *= n
        count += elements
    return count * itemsize


def component_bytes(folder: Path, itemsize: int) -> dict[str, int]:
    """The loaded bytes of each component of a diffusers folder."""
    sizes = {
        part.name: sum(file_bytes(f, itemsize) for f in part.glob("*.safetensors"))
        for part in sorted(p for p in folder.iterdir() if p.is_dir())
    }
    return {name: size for name, size in sizes.items() if size}


def _resident(sizes: dict[str, int], quantize: str, offload: str) -> float:
    transformer = sizes.get("transformer", 0) * _QUANTIZED[quantize]
    others = [size for name, size in sizes.items() if name != "transformer"]
    if offload == "none":
        return transformer + sum(others)
    largest = max([transformer, *others])
    return largest if offload in ("model",) else largest * _GROUP_RESIDENT


def choose(
    quantize: str,
    offload: str,
    sizes: dict[str, int],
    free: int | None,
    *,
    weight_only: str = "fp8",
    prequantized: bool = False,
) -> MemoryPlan:
    """The plan for a model of ``sizes`` (bytes per component) on a device with ``free``
    bytes (None: the CPU). ``weight_only``: the quantization ``auto`` may use (fp8 where the
    GPU computes it, else int8); ``prequantized``: the transformer is a GGUF file already."""
    if free is None:
        return MemoryPlan("none" if quantize == "auto" else quantize, "none")
    quantizations = [quantize] if quantize != "auto" else ["none", weight_only]
    if prequantized:
        quantizations = ["none"]
    offloads = [offload] if offload != "auto" else list(_OFFLOADS)
    for where in offloads:
        for how in quantizations:
            if _resident(sizes, how, where) * _SLACK + _ACTIVATIONS <= free:
                return MemoryPlan(how, where)
    return MemoryPlan(quantizations[-1], offloads[-1])  # the most frugal: it may still not fit


def check(settings: Any, device: torch.device) -> None:
    """Refuse at a worker's start what its device cannot do: offloading without a GPU, nf4
    without CUDA."""
    from huabu.errors import WorkerMisconfigured

    if device.type != "cuda" and settings.offload not in ("auto", "none"):
        raise WorkerMisconfigured(
            f"HUABU_OFFLOAD={settings.offload} moves weights between RAM and a GPU; this worker "
            f"runs on {device.type} (use auto or none)"
        )
    if device.type != "cuda" and settings.quantize == "nf4":
        raise WorkerMisconfigured(
            f"HUABU_QUANTIZE=nf4 (bitsandbytes) runs on CUDA GPUs; this worker runs on "
            f"{device.type} (use fp8 or int8)"
        )


def plan_for(settings: Any, pipe_sizes: dict[str, int], device: torch.device, gguf: bool):
    """The plan for a model about to move to ``device`` (its free memory now: the cache has
    evicted what it would)."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else None
    fp8 = device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)
    return choose(
        settings.quantize,
        settings.offload,
        pipe_sizes,
        free,
        weight_only="fp8" if fp8 else "int8",
        prequantized=gguf,
    )


def apply(pipe: Any, plan: MemoryPlan, device: torch.device, dtype: torch.dtype) -> None:
    """Quantize the pipeline's transformer as ``plan`` says, then put the pipeline on
    ``device`` (whole, or offloaded)."""
    if plan.quantize in ("fp8", "int8"):
        try:
            from torchao.quantization import (
                Float8WeightOnlyConfig,
                Int8WeightOnlyConfig,
                quantize_,
            )
        except ImportError:
            raise ModelUnavailable(
                f"HUABU_QUANTIZE={plan.quantize} needs torchao (pip install torchao)"
            ) from None
        config = Float8WeightOnlyConfig() if plan.quantize == "fp8" else Int8WeightOnlyConfig()
        quantize_(pipe.transformer, config)
    elif plan.quantize == "nf4":
        _nf4(pipe.transformer, device, dtype)
    if plan.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.offload == "group":
        pipe.enable_group_offload(
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=True,
        )
    else:
        pipe.to(device)
    log.info("memory plan: %s", plan.label)


def _nf4(transformer: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """The transformer's linear layers as bitsandbytes' 4-bit NF4 layers (quantized as they
    move to the GPU)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ModelUnavailable(
            "HUABU_QUANTIZE=nf4 needs bitsandbytes (pip install bitsandbytes)"
        ) from None
    for module in list(transformer.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=dtype,
                quant_type="nf4",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data, requires_grad=False, quant_type="nf4"
            )
            if child.bias is not None:
                layer.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
            setattr(module, child_name, layer)
