"""HUABU_COMPILE: each loaded model's UNet compiled by torch.compile (a flow family's
transformer: its repeated blocks, see ``prepare_transformer``).

The UNet is compiled in place (``nn.Module.compile``: ``pipe.unet`` stays the same module, so
LoRA loading, ControlNet pipelines and offloading see what they always see), in channels-last
memory and with its attention's q/k/v projections fused into one matrix product. It is warmed
up when the model loads, with a call shaped like the samplers' at the model's native size, so
the first request does not stall on its first step.

Compiled graphs are kept on disk (inductor's cache in ``$HUABU_HOME/cache/torch-compile``): a
restarted worker loads them instead of compiling again. A new shape (size, batch size) or
variant (LoRAs on or off) compiles a new graph; after ``HUABU_COMPILE_RECOMPILES`` of them
per model, further ones run uncompiled rather than stall every request on a compile.

What changes the UNet's structure changes its graph, so:
- LoRAs go into fixed slots whose weights are swapped in place (:mod:`lora_slots`);
- fused projections would hide a LoRA's ``to_q``/``to_k``/``to_v`` weights and an IP-Adapter's
  attention, so the first LoRA or IP-Adapter on a model unfuses them, for good (one recompile);
- an IP-Adapter, loaded and unloaded per request, runs uncompiled.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from huabu.catalog.architectures import Architecture, native_size
from huabu.settings import Settings

log = logging.getLogger("huabu.engine")


def configure(settings: Settings) -> None:
    """Process-wide torch.compile settings: the disk cache and the recompile bound (set
    before the first compile)."""
    folder = settings.cache_dir / "torch-compile"
    folder.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    torch._dynamo.config.recompile_limit = settings.compile_recompiles


def prepare(unet: Any, settings: Settings) -> None:
    """Compile ``unet`` in place (it compiles on its first call)."""
    unet.to(memory_format=torch.channels_last)
    unet.fuse_qkv_projections()
    unet.compile(backend=settings.compile_backend)


def is_compiled(unet: Any) -> bool:
    return getattr(unet, "_compiled_call_impl", None) is not None


#: The repeated block of a flow transformer that does not name its own (diffusers'
#: ``_repeated_blocks``): SD 3's.
_BLOCKS = {"SD3Transformer2DModel": ("JointTransformerBlock",)}


def prepare_transformer(transformer: Any, settings: Settings) -> int:
    """Regional compilation of a flow family's transformer: each of its repeated blocks
    compiled in place (what diffusers' ``compile_repeated_blocks`` does, for SD 3's blocks
    too), so that the first call compiles one graph per kind of block, not the whole model.
    Returns how many blocks were compiled."""
    kinds: tuple[str, ...] = tuple(getattr(transformer, "_repeated_blocks", None) or ()) or (
        _BLOCKS.get(type(transformer).__name__, ())
    )
    blocks = [module for module in transformer.modules() if type(module).__name__ in kinds]
    for block in blocks:
        block.compile(backend=settings.compile_backend)
    return len(blocks)


def unfuse(unet: Any) -> None:
    """Back to separate q/k/v projections (the weights LoRAs and IP-Adapters act on)."""
    if getattr(unet, "original_attn_processors", None) is not None:
        unet.unfuse_qkv_projections()
        unet.original_attn_processors = None
        log.info("attention projections unfused for LoRAs and IP-Adapters (one recompile)")


@contextmanager
def eager(unet: Any) -> Iterator[None]:
    """Within the block ``unet`` runs uncompiled (for what would only recompile it)."""
    compiled = getattr(unet, "_compiled_call_impl", None)
    unet._compiled_call_impl = None
    try:
        yield
    finally:
        unet._compiled_call_impl = compiled


def warm_up(pipe: Any, architecture: Architecture, name: str) -> None:
    """One UNet call as the k-diffusion samplers make it (classifier-free guidance: a batch
    of two) at the model's native size, so its graph is compiled before a request waits."""
    unet = pipe.unet
    config = unet.config
    side = native_size(architecture, dict(config)) // pipe.vae_scale_factor
    dtype, device = unet.dtype, unet.device
    sample = torch.zeros(2, config.in_channels, side, side, dtype=dtype, device=device)
    context = torch.zeros(2, 77, config.cross_attention_dim, dtype=dtype, device=device)
    added = None
    if config.addition_embed_type == "text_time":  # SDXL: pooled text and size/crop ids
        pooled = pipe.text_encoder_2.config.projection_dim
        ids = (config.projection_class_embeddings_input_dim - pooled) // (
            config.addition_time_embed_dim
        )
        added = {
            "text_embeds": torch.zeros(2, pooled, dtype=dtype, device=device),
            "time_ids": torch.zeros(2, ids, dtype=dtype, device=device),
        }
    began = time.perf_counter()
    with torch.no_grad():
        unet(
            sample,
            torch.full((2,), 500.0, device=device),
            encoder_hidden_states=context,
            added_cond_kwargs=added,
        )
    log.info("compiled %s's UNet in %.1f s", name, time.perf_counter() - began)
