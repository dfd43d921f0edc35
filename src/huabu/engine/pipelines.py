"""Loading checkpoints into diffusers pipelines, and an LRU cache of loaded ones.

One set of weights per checkpoint serves txt2img and img2img (two pipeline objects over the
same modules); schedulers are never shared (see :mod:`huabu.engine.samplers`).

A request mutates the model it runs on (LoRAs switched on and off, an IP-Adapter loaded and
unloaded, the VAE's dtype flipped for an fp32 retry), so a model is only ever used through
``PipelineCache.lease``: one request at a time per model, enforced by the model's lock, and
eviction passes over a model while it is leased. Override VAEs are leased the same way.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from huabu.catalog.architectures import Architecture
from huabu.catalog.library import ModelEntry, ModelLibrary
from huabu.engine import compiling, flow, memory_plan
from huabu.engine.adapters import Embeddings, IpAdapter, LoraSwitch
from huabu.engine.lora_slots import LoraSlots
from huabu.engine.prompts import PromptEncoder
from huabu.engine.single_file import (
    CheckpointHeader,
    config_folder,
    derive_configs,
    derive_vae_config,
    single_file_controlnet,
)
from huabu.errors import ModelUnavailable
from huabu.settings import Settings

log = logging.getLogger(__name__)

_PIPELINES = {
    Architecture.SD1: (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline),
    Architecture.SD2: (StableDiffusionPipeline, StableDiffusionImg2ImgPipeline),
    Architecture.SDXL: (StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline),
    # A refiner only continues another model's image: image-to-image is all it does.
    Architecture.SDXL_REFINER: (
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
    ),
}
#: Built per request from the loaded pipeline's components (see Engine._diffusers_sample).
_INPAINT_PIPELINES = {
    Architecture.SD1: StableDiffusionInpaintPipeline,
    Architecture.SD2: StableDiffusionInpaintPipeline,
    Architecture.SDXL: StableDiffusionXLInpaintPipeline,
}
_SD_CONTROLNET = (
    StableDiffusionControlNetPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
)
#: (txt2img, img2img, inpainting) with ControlNet units, built per request like inpainting.
_CONTROLNET_PIPELINES = {
    Architecture.SD1: _SD_CONTROLNET,
    Architecture.SD2: _SD_CONTROLNET,
    Architecture.SDXL: (
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLControlNetImg2ImgPipeline,
        StableDiffusionXLControlNetInpaintPipeline,
    ),
}


def pick_device(setting: str) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype to run on: fp16 on accelerators, fp32 on CPU."""
    if setting == "auto":
        if torch.cuda.is_available():
            setting = "cuda"
        elif torch.backends.mps.is_available():
            setting = "mps"
        else:
            setting = "cpu"
    device = torch.device(setting)
    return device, (torch.float32 if device.type == "cpu" else torch.float16)


@dataclass
class LoadedModel:
    """A checkpoint in memory, ready to serve requests."""

    entry: ModelEntry
    architecture: Architecture
    txt2img: Any
    img2img: Any
    prompt_encoder: PromptEncoder
    model_hash: str | None
    loras: LoraSwitch | LoraSlots
    embeddings: Embeddings
    ip_adapter: IpAdapter
    #: Held by the one request using the model (see ``PipelineCache.lease``).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: Leases held or waited for; the cache never evicts a model while this is above 0.
    leases: int = 0

    @property
    def components(self) -> dict[str, Any]:
        return self.txt2img.components

    @property
    def inpaint_class(self) -> type:
        return _INPAINT_PIPELINES[self.architecture]

    @property
    def controlnet_classes(self) -> tuple[type, type, type]:
        return _CONTROLNET_PIPELINES[self.architecture]


class PipelineCache:
    """Keeps the ``settings.pipeline_cache_size`` most recently used checkpoints loaded."""

    def __init__(self, settings: Settings, library: ModelLibrary) -> None:
        self.settings = settings
        self.library = library
        self.device, self.dtype = pick_device(settings.device)
        self._models: OrderedDict[str, LoadedModel | flow.FlowModel] = OrderedDict()
        #: Checkpoints loaded so far (the fleet view shows it per worker).
        self.loads = 0
        #: Seconds spent loading them (a worker advertises both with its heartbeat).
        self.load_seconds = 0.0
        self._vaes: OrderedDict[str, tuple[AutoencoderKL, threading.Lock]] = OrderedDict()
        self._controlnets: OrderedDict[tuple, ControlNetModel] = OrderedDict()
        self._lock = threading.Lock()
        memory_plan.check(settings, self.device)
        if settings.compile:
            compiling.configure(settings)

    @contextmanager
    def lease(self, name: str, *, param: str = "model") -> Iterator[Any]:
        """The checkpoint ``name``, loaded if need be, for one request: the block has it to
        itself (other requests for it wait), and it is not evicted meanwhile."""
        with self._lock:
            model = self._get(name, param)
            model.leases += 1
        try:
            with model.lock:
                yield model
        finally:
            with self._lock:
                model.leases -= 1
                self._evict(keep=self.settings.pipeline_cache_size)

    def _get(self, name: str, param: str = "model") -> LoadedModel | flow.FlowModel:
        """The loaded model (the caller holds ``_lock``), evicting idle ones to make room."""
        if name in self._models:
            self._models.move_to_end(name)
            return self._models[name]
        entry = self.library.find("checkpoints", name, param=param)
        self._evict(keep=self.settings.pipeline_cache_size - 1)
        began = time.perf_counter()
        model = self._load(entry)
        self._models[name] = model
        self.loads += 1
        self.load_seconds += time.perf_counter() - began
        log.info("loaded %s in %.1f s", name, time.perf_counter() - began)
        return model

    def _evict(self, *, keep: int) -> None:
        """Unload the least recently used models that nobody leases until ``keep`` remain (or
        only leased ones do: the cache may hold more than its size while they run)."""
        while len(self._models) > keep:
            idle = next((name for name, m in self._models.items() if m.leases == 0), None)
            if idle is None:
                return
            del self._models[idle]
            log.info("unloading %s", idle)
            self.release_memory()

    @contextmanager
    def vae(self, name: str) -> Iterator[AutoencoderKL]:
        """The override VAE ``name`` for one request (it may be shared by several models'
        requests, and a decode can flip its dtype: one request at a time)."""
        with self._lock:
            if name not in self._vaes:
                entry = self.library.find("vae", name, param="vae")
                if entry.layout == "diffusers":
                    vae = AutoencoderKL.from_pretrained(entry.path, local_files_only=True)
                elif entry.layout == "single-file":
                    vae = self._single_file_vae(entry.path)
                else:
                    raise ModelUnavailable(f"VAE {name!r} is a pickle; convert it to safetensors")
                self._vaes[name] = (vae.to(self.device, self.dtype), threading.Lock())
                while len(self._vaes) > 2:
                    self._vaes.popitem(last=False)  # a request using it keeps its reference
            self._vaes.move_to_end(name)
            vae, lock = self._vaes[name]
        with lock:
            yield vae

    def controlnet(self, name: str, index: int, unet: Any) -> ControlNetModel:
        """ControlNet ``name`` for a model whose UNet is ``unet``: a diffusers folder, or an
        A1111 single file (built on ``unet``'s structure, so it is cached per structure)."""
        param = f"controlnets.{index}.model"
        key = (
            name,
            unet.config.cross_attention_dim,
            tuple(unet.config.block_out_channels),
            unet.config.addition_embed_type,
        )
        with self._lock:
            if key not in self._controlnets:
                entry = self.library.find("controlnet", name, param=param)
                if entry.layout == "diffusers":
                    model = ControlNetModel.from_pretrained(
                        entry.path, dtype=self.dtype, local_files_only=True
                    )
                elif entry.layout == "single-file":
                    model = single_file_controlnet(entry.path, name, unet).to(dtype=self.dtype)
                else:
                    raise ModelUnavailable(
                        f"ControlNet {name!r} is a pickle ({entry.path.suffix}); convert it to "
                        ".safetensors"
                    )
                if not _fits(model.config, unet.config):
                    raise ModelUnavailable(
                        f"ControlNet {name!r} was made for another model family than this "
                        "checkpoint's"
                    )
                self._controlnets[key] = model.to(self.device)
                while len(self._controlnets) > 4:
                    self._controlnets.popitem(last=False)
            self._controlnets.move_to_end(key)
            return self._controlnets[key]

    def loaded(self) -> list[str]:
        return list(self._models)

    def load_private(self, name: str) -> LoadedModel:
        """A copy of checkpoint ``name`` that is not cached: its owner may change its weights
        (training adds adapters) and must ``release`` it when done."""
        entry = self.library.find("checkpoints", name, param="base_model")
        return self._load(entry, compile=False)

    def memory_plans(self) -> dict[str, str]:
        """How each loaded flow model's weights fit the device (``MemoryPlan.label``)."""
        return {
            name: model.memory.label
            for name, model in self._models.items()
            if isinstance(model, flow.FlowModel)
        }

    def gpu_memory(self) -> int | None:
        """Bytes of GPU memory torch has allocated on this cache's device (None: no GPU)."""
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.memory_allocated(self.device))

    def release_memory(self) -> None:
        """Return freed weights' memory (to the GPU allocator's pool, on CUDA) at once."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _load(self, entry: ModelEntry, *, compile: bool = True) -> Any:
        """A ``LoadedModel`` (the SD families), or a ``flow.FlowModel``."""
        path = entry.path
        if entry.layout == "pickle":
            path = self._convert_pickle(entry)
        if entry.architecture is not None and entry.architecture.is_flow:
            model_hash = self.library.model_hash(entry)
            model = flow.load(entry, path, self.device, self.dtype, model_hash, self.library)
            if compile and self.settings.compile:
                compiling.prepare_transformer(model.txt2img.transformer, self.settings)
            return model
        if entry.layout == "diffusers":
            architecture = entry.architecture
            if architecture is None:
                raise ModelUnavailable(f"{entry.name}: not a Stable Diffusion diffusers folder")
            txt2img_cls, img2img_cls = _PIPELINES[architecture]
            extra = (
                {}
                if architecture.is_sdxl
                else {
                    "safety_checker": None,
                    "feature_extractor": None,
                    "requires_safety_checker": False,
                }
            )
            try:
                pipe = txt2img_cls.from_pretrained(
                    path, dtype=self.dtype, local_files_only=True, **extra
                )
            except (OSError, ValueError) as exc:
                raise ModelUnavailable(
                    f"model {entry.name!r} cannot be loaded: its diffusers folder is incomplete or "
                    "damaged (the server log has the details)"
                ) from exc
        else:
            header = CheckpointHeader.read(path)
            architecture = header.architecture()
            if architecture is None:
                raise ModelUnavailable(
                    f"{entry.name}: not a Stable Diffusion 1.x, 2.x or SDXL checkpoint "
                    "(unrecognised tensor names)"
                )
            configs = derive_configs(header, architecture, entry.path.with_suffix(".json"))
            folder = config_folder(configs, architecture, self.settings.cache_dir)
            txt2img_cls, img2img_cls = _PIPELINES[architecture]
            try:
                pipe = txt2img_cls.from_single_file(
                    str(path), config=str(folder), dtype=self.dtype, local_files_only=True
                )
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise ModelUnavailable(
                    f"model {entry.name!r} cannot be loaded: the checkpoint is damaged or not in a "
                    "layout huabu reads (the server log has the details)"
                ) from exc
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if compile and self.settings.compile:
            compiling.prepare(pipe.unet, self.settings)
            compiling.warm_up(pipe, architecture, entry.name)
            loras: LoraSwitch | LoraSlots = LoraSlots(
                pipe, self.library, self.settings.lora_max_rank
            )
        else:
            loras = LoraSwitch(pipe, self.library)
        # (A refiner is an image-to-image pipeline already, with its own settings.)
        img2img = pipe if isinstance(pipe, img2img_cls) else img2img_cls(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
        xl = architecture.is_sdxl
        # SDXL: both encoders; its refiner has only the second.
        tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t]
        encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e]
        encoder = PromptEncoder(
            tokenizers,
            encoders,
            penultimate=xl,
            zero_empty_negative=bool(pipe.config.get("force_zeros_for_empty_prompt", False)),
        )
        return LoadedModel(
            entry,
            architecture,
            pipe,
            img2img,
            encoder,
            self.library.model_hash(entry),
            loras,
            Embeddings(pipe, self.library),
            IpAdapter(pipe, self.library),
        )

    def _convert_pickle(self, entry: ModelEntry) -> Path:
        """Pickled checkpoints can run code when loaded: only with HUABU_ALLOW_PICKLE=true."""
        if not self.settings.allow_pickle:
            raise ModelUnavailable(
                f"{entry.name}{entry.path.suffix} is a pickled checkpoint, which can run "
                "arbitrary code when loaded. Convert it to .safetensors, or set "
                "HUABU_ALLOW_PICKLE=true if you trust its source."
            )
        from safetensors.torch import save_file

        stat = entry.path.stat()
        key = hashlib.sha256(f"{entry.path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        target = self.settings.cache_dir / "converted" / f"{entry.name}-{key[:12]}.safetensors"
        if not target.exists():
            state = torch.load(entry.path, map_location="cpu", weights_only=False)
            state = state.get("state_dict", state)
            tensors = {k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
            target.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(target))
        return target

    def _single_file_vae(self, path: Path) -> AutoencoderKL:
        config = derive_vae_config(CheckpointHeader.read(path))
        folder = config_folder({"vae": config}, Architecture.SD1, self.settings.cache_dir)
        return AutoencoderKL.from_single_file(
            str(path), config=str(folder), subfolder="vae", local_files_only=True
        )


def _fits(controlnet: Any, unet: Any) -> bool:
    """Whether a ControlNet (its config) was made for a UNet with this config: the same
    widths, text conditioning and extra (SDXL size/crop) embedding."""
    keys = ("cross_attention_dim", "block_out_channels", "addition_embed_type")
    return all(_plain(controlnet.get(k)) == _plain(unet.get(k)) for k in keys)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
