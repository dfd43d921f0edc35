"""LoRA training on a base checkpoint, in the manner of diffusers' text-to-image LoRA example:
frozen VAE and text encoder, peft LoRA on the UNet's attention projections, noise-prediction
(or v-prediction) MSE loss, AdamW. The result is written as a kohya (sd-scripts) style
``.safetensors`` into ``models/loras/``, so A1111, ComfyUI and huabu itself can load it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from PIL import Image, ImageOps
from safetensors.torch import save_file

from huabu.catalog.library import ModelLibrary
from huabu.engine.pipelines import LoadedModel, PipelineCache
from huabu.errors import Cancelled, InvalidRequest
from huabu.settings import Settings
from huabu.training import TRAINABLE

ProgressCallback = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass(frozen=True)
class TrainingJob:
    """What to train: ``name`` becomes ``models/loras/<name>.safetensors`` (a qualified
    private name, ``@<owner>/<name>``, lands in that owner's folder). ``resolution`` None is
    the base model's native size."""

    name: str
    base_model: str
    images: tuple[Image.Image, ...]
    captions: tuple[str, ...]
    steps: int = 100
    rank: int = 4
    learning_rate: float = 1e-4
    resolution: int | None = None
    batch_size: int = 4
    seed: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingResult:
    path: Path
    losses: tuple[float, ...]


def _square(image: Image.Image, size: int) -> torch.Tensor:
    """Centre crop to a square, resize, scale to [-1, 1], channels first."""
    fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.asarray(fitted).copy()).float()
    return pixels.permute(2, 0, 1) / 127.5 - 1


def _kohya_state(peft_state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """peft's ``<module>.lora_A/B.weight`` → kohya's ``lora_unet_<module>.lora_down/up.weight``
    plus ``.alpha`` (alpha = rank: scale 1)."""
    state = {}
    for key, tensor in peft_state.items():
        module, _, kind = key.rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        direction = "down" if kind.startswith("A") else "up"
        state[f"{name}.lora_{direction}.weight"] = tensor.detach().float().contiguous().cpu()
        state[f"{name}.alpha"] = torch.tensor(float(rank))
    return state


def train_lora(
    settings: Settings,
    job: TrainingJob,
    *,
    library: ModelLibrary | None = None,
    on_progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    replace: bool = False,
    cache: PipelineCache | None = None,
) -> TrainingResult:
    """Train, then write the LoRA atomically; a cancelled or failed run writes nothing.
    An existing file of that name is refused unless ``replace`` (the caller owns the name:
    a re-run of the same training job after its worker died). The base model is loaded through
    ``cache`` (a worker passes its engine's) as a private copy, freed when training ends."""
    library = library or ModelLibrary(settings)
    if not job.images or len(job.images) != len(job.captions):
        raise InvalidRequest("the dataset has no images", param="datasets")
    base = library.find("checkpoints", job.base_model, param="base_model")
    if base.architecture not in TRAINABLE:
        raise InvalidRequest(
            f"base_model: {job.base_model!r} is {base.describe_architecture}; LoRA training "
            "supports SD 1.x and 2.x base models",
            param="base_model",
        )
    target = settings.models_dir / "loras" / f"{job.name}.safetensors"
    if target.exists() and not replace:
        raise InvalidRequest(f"a model named {job.name!r} already exists", param="name")
    # A private copy of the base: training must not touch the pipelines serving requests. It is
    # freed as soon as the LoRA's weights are out of it, whatever happens.
    cache = cache or PipelineCache(settings, library)
    model = cache.load_private(job.base_model)
    try:
        state, losses, resolution = _train(model, job, on_progress, should_cancel)
    finally:
        del model
        cache.release_memory()
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(job.rank),
        "ss_network_alpha": str(job.rank),
        "ss_output_name": job.name,
        "ss_steps": str(job.steps),
        "ss_learning_rate": str(job.learning_rate),
        "ss_resolution": json.dumps([resolution, resolution]),
        "ss_sd_model_name": job.base_model,
        **job.metadata,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, target)
    return TrainingResult(target, tuple(losses))


def _train(
    model: LoadedModel,
    job: TrainingJob,
    on_progress: ProgressCallback | None,
    should_cancel: Callable[[], bool] | None,
) -> tuple[dict[str, torch.Tensor], list[float], int]:
    """Train a LoRA on ``model``'s UNet (which it changes): (kohya state, losses, resolution)."""
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = model.txt2img
    unet, vae, device = pipe.unet, pipe.vae, pipe.device
    for module in (unet, vae, pipe.text_encoder):
        module.requires_grad_(False)
    torch.manual_seed(job.seed)
    unet.add_adapter(
        LoraConfig(
            r=job.rank,
            lora_alpha=job.rank,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    trainable = [p for p in unet.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()
    optimizer = torch.optim.AdamW(trainable, lr=job.learning_rate, weight_decay=1e-2)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    resolution = job.resolution or unet.config.sample_size * pipe.vae_scale_factor
    with torch.no_grad():
        pixels = torch.stack([_square(image, resolution) for image in job.images])
        latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        texts = [model.prompt_encoder.encode(c, "").embeds[0] for c in job.captions]
        width = max(t.shape[0] for t in texts)  # long captions: pad to the same chunk count
        texts = [F.pad(t, (0, 0, 0, width - t.shape[0])) for t in texts]
        conditioning = torch.stack(texts)
    generator = torch.Generator().manual_seed(job.seed)
    losses = []
    unet.train()
    for step in range(job.steps):
        if should_cancel is not None and should_cancel():
            raise Cancelled("training cancelled")
        index = torch.randint(
            0, len(job.images), (min(job.batch_size, len(job.images)),), generator=generator
        )
        clean, text = latents[index].float(), conditioning[index]
        noise = torch.randn(clean.shape, generator=generator).to(device)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps, (len(index),), generator=generator
        ).to(device)
        noisy = noise_scheduler.add_noise(clean, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            wanted = noise_scheduler.get_velocity(clean, noise, timesteps)
        else:
            wanted = noise
        predicted = unet(noisy.to(unet.dtype), timesteps, text.to(unet.dtype)).sample
        loss = F.mse_loss(predicted.float(), wanted.float())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_progress is not None:
            on_progress(step + 1, job.steps, losses[-1])
    return _kohya_state(get_peft_model_state_dict(unet), job.rank), losses, resolution
