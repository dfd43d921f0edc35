"""The model families huabu loads, and the diffusers configs it ships for them (no weights).

A single-file checkpoint carries weights only. To load one offline huabu detects its family
from the state-dict keys, takes that family's reference config below (the published
SD 1.5 / SD 2.1 / SDXL base configs) and overlays every dimension that can be read from the
tensor shapes, so fine-tunes, inpainting models and huabu's own tiny demo load through the same
path. What shapes cannot tell (attention heads, prediction type) comes from the family default,
or from overrides in the file's safetensors metadata (``huabu.config``) or a ``<name>.json``
sidecar, e.g. ``{"scheduler": {"prediction_type": "epsilon"}}`` for an SD 2.x *base* model.
"""

from __future__ import annotations

import copy
import enum
from typing import Any

Config = dict[str, Any]


class Architecture(enum.StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    #: SDXL's refiner: the second stage of SDXL's "ensemble of experts" (only the OpenCLIP
    #: encoder, an aesthetic-score condition); it only ever continues an SDXL model's image.
    SDXL_REFINER = "sdxl-refiner"
    # The flow-matching transformer families (diffusers runs them whole; see engine.flow).
    FLUX1 = "flux1"
    #: FLUX.1 [schnell]: timestep-distilled (4 steps), without [dev]'s guidance embedding.
    FLUX1_SCHNELL = "flux1-schnell"
    FLUX1_KONTEXT = "flux1-kontext"
    FLUX2 = "flux2"
    #: FLUX.2 [klein]: the small FLUX.2 over a Qwen3 text encoder (FLUX.2 [dev]: Mistral).
    FLUX2_KLEIN = "flux2-klein"
    QWEN_IMAGE = "qwen-image"
    QWEN_IMAGE_EDIT = "qwen-image-edit"
    Z_IMAGE = "z-image"
    SD3 = "sd3"

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def is_sdxl(self) -> bool:
        return self in (Architecture.SDXL, Architecture.SDXL_REFINER)

    @property
    def lora_family(self) -> Architecture:
        """The family whose LoRAs it takes ([schnell] and Kontext take FLUX.1's: the same
        transformer's layers, and LoRA files that cannot tell them apart)."""
        if self in (Architecture.FLUX1_SCHNELL, Architecture.FLUX1_KONTEXT):
            return Architecture.FLUX1
        if self is Architecture.QWEN_IMAGE_EDIT:  # (Qwen-Image's transformer, fine-tuned)
            return Architecture.QWEN_IMAGE
        if self is Architecture.FLUX2_KLEIN:  # (FLUX.2's layers; the widths tell the sizes apart)
            return Architecture.FLUX2
        return self

    @property
    def is_flow(self) -> bool:
        """A flow-matching transformer family (FLUX, Qwen-Image, Z-Image, SD 3.x), not a UNet."""
        return self.value not in ("sd1", "sd2", "sdxl", "sdxl-refiner")


_LABELS = {
    Architecture.SD1: "SD 1.x",
    Architecture.SD2: "SD 2.x",
    Architecture.SDXL: "SDXL",
    Architecture.SDXL_REFINER: "SDXL refiner",
    Architecture.FLUX1: "FLUX.1",
    Architecture.FLUX1_SCHNELL: "FLUX.1 [schnell]",
    Architecture.FLUX1_KONTEXT: "FLUX.1 Kontext",
    Architecture.FLUX2: "FLUX.2",
    Architecture.FLUX2_KLEIN: "FLUX.2 [klein]",
    Architecture.QWEN_IMAGE: "Qwen-Image",
    Architecture.QWEN_IMAGE_EDIT: "Qwen-Image-Edit",
    Architecture.Z_IMAGE: "Z-Image",
    Architecture.SD3: "SD 3.x",
}
#: The flow families by the pipeline class a diffusers folder's model_index names.
_FLOW_PIPELINES = {
    "FluxPipeline": Architecture.FLUX1,
    "FluxKontextPipeline": Architecture.FLUX1_KONTEXT,
    "Flux2Pipeline": Architecture.FLUX2,
    "Flux2KleinPipeline": Architecture.FLUX2_KLEIN,
    "QwenImagePipeline": Architecture.QWEN_IMAGE,
    "QwenImageEditPipeline": Architecture.QWEN_IMAGE_EDIT,
    "QwenImageEditPlusPipeline": Architecture.QWEN_IMAGE_EDIT,
    "ZImagePipeline": Architecture.Z_IMAGE,
    "StableDiffusion3Pipeline": Architecture.SD3,
}


_SCHEDULER: Config = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

_VAE: Config = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

_CLIP_L: Config = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
    "torch_dtype": "float32",
}

#: OpenCLIP bigG's text tower with its projection (SDXL's second encoder, SD 3's CLIP-G).
_CLIP_G: Config = {
    **_CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "model_type": "clip_text_model",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}

_UNET_SD1: Config = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "sample_size": 64,
}

_TOKENIZER_L: Config = {
    "model_max_length": 77,
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "do_lower_case": True,
    "tokenizer_class": "CLIPTokenizer",
}
# OpenCLIP-trained encoders (SD 2.x, SDXL's second) pad with "!" (id 0), not end-of-text.
_TOKENIZER_OPENCLIP: Config = {**_TOKENIZER_L, "pad_token": "!"}

_SD1: dict[str, Config] = {
    "model_index": {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler": _SCHEDULER,
    "text_encoder": _CLIP_L,
    "tokenizer": _TOKENIZER_L,
    "unet": _UNET_SD1,
    "vae": _VAE,
}

# SD 2.1 (768, v-prediction). The OpenCLIP ViT-H text encoder is used up to its penultimate
# layer, so the diffusers text encoder has 23 of its 24 layers.
_SD2: dict[str, Config] = {
    **_SD1,
    "scheduler": {**_SCHEDULER, "prediction_type": "v_prediction"},
    "text_encoder": {
        **_CLIP_L,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 23,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
    "tokenizer": _TOKENIZER_OPENCLIP,
    "unet": {
        **_UNET_SD1,
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "upcast_attention": True,
        "sample_size": 96,
    },
    "vae": {**_VAE, "sample_size": 768},
}

_SDXL: dict[str, Config] = {
    "model_index": {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler": {
        **{k: v for k, v in _SCHEDULER.items() if k not in ("skip_prk_steps", "set_alpha_to_one")},
        "_class_name": "EulerDiscreteScheduler",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
    },
    "text_encoder": _CLIP_L,
    "text_encoder_2": _CLIP_G,
    "tokenizer": _TOKENIZER_L,
    "tokenizer_2": _TOKENIZER_OPENCLIP,
    "unet": {
        **_UNET_SD1,
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "projection_class_embeddings_input_dim": 2816,
        "transformer_layers_per_block": [1, 2, 10],
        "use_linear_projection": True,
        "sample_size": 128,
    },
    "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
}

# The published SDXL refiner 1.0 (diffusers folder layout; single files are not read yet).
_SDXL_REFINER: dict[str, Config] = {
    "model_index": {
        **_SDXL["model_index"],
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "force_zeros_for_empty_prompt": False,
        "requires_aesthetics_score": True,
        "text_encoder": [None, None],
        "tokenizer": [None, None],
    },
    "scheduler": _SDXL["scheduler"],
    "text_encoder_2": _SDXL["text_encoder_2"],
    "tokenizer_2": _TOKENIZER_OPENCLIP,
    "unet": {
        **_SDXL["unet"],
        "attention_head_dim": [6, 12, 24, 24],
        "block_out_channels": [384, 768, 1536, 1536],
        "cross_attention_dim": 1280,
        "down_block_types": [
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "projection_class_embeddings_input_dim": 2560,
        "transformer_layers_per_block": 4,
    },
    "vae": _SDXL["vae"],
}

#: FLUX.1 [dev]'s published configs, for its split single files (see ``catalog.split_files``):
#: the shapes give every width and depth, these what they cannot (rotary axes, VAE scaling).
_FLUX1: dict[str, Config] = {
    "transformer": {
        "_class_name": "FluxTransformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
    "text_encoder": _CLIP_L,
    "text_encoder_2": {
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "vocab_size": 32128,
        "is_encoder_decoder": False,
        "use_cache": False,
        "pad_token_id": 0,
        "eos_token_id": 1,
    },
    "vae": {
        **_VAE,
        "latent_channels": 16,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    "scheduler": {
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
}
#: [schnell]: no guidance embedding, and a fixed schedule (no resolution-dependent shift).
_FLUX1_SCHNELL = {
    **_FLUX1,
    "transformer": {**_FLUX1["transformer"], "guidance_embeds": False},
    "scheduler": {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False},
}

#: SD 3.5 Large's published configs, for SAI's single files (see ``catalog.split_files``).
_SD3: dict[str, Config] = {
    "transformer": {
        "_class_name": "SD3Transformer2DModel",
        "attention_head_dim": 64,
        "caption_projection_dim": 2432,
        "dual_attention_layers": [],
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 38,
        "num_layers": 38,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "qk_norm": "rms_norm",
        "sample_size": 128,
    },
    "text_encoder": {**_CLIP_L, "architectures": ["CLIPTextModelWithProjection"]},
    "text_encoder_2": _CLIP_G,
    "text_encoder_3": _FLUX1["text_encoder_2"],
    "vae": {**_FLUX1["vae"], "scaling_factor": 1.5305, "shift_factor": 0.0609},
    "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
}

_CONFIGS = {Architecture.SD1: _SD1, Architecture.SD2: _SD2, Architecture.SDXL: _SDXL,
            Architecture.SDXL_REFINER: _SDXL_REFINER, Architecture.FLUX1: _FLUX1,
            Architecture.FLUX1_KONTEXT: _FLUX1,
            Architecture.FLUX1_SCHNELL: _FLUX1_SCHNELL, Architecture.SD3: _SD3}  # fmt: skip


def reference_config(architecture: Architecture) -> dict[str, Config]:
    """A fresh deep copy of a family's configs, keyed by component folder name."""
    return copy.deepcopy(_CONFIGS[architecture])


def native_size(architecture: Architecture, unet: Config | None = None) -> int:
    """The square side a model was trained at: its UNet's ``sample_size`` latents, times the
    VAE's 8 (SD 1.x 512, SD 2.x 768, SDXL 1024), or the family's when the config lacks it.
    The flow families are trained at 1024² (their transformers take any size)."""
    if architecture.is_flow:
        return 1024
    sample = (unet or {}).get("sample_size") or reference_config(architecture)["unet"][
        "sample_size"
    ]
    return int(sample) * 8


def detect_architecture(keys: set[str]) -> Architecture | None:
    """The family of an original-layout (LDM / SGM) state dict, from its key names."""
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return Architecture.SDXL
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        return Architecture.SDXL_REFINER
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Architecture.SD2
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Architecture.SD1
    return None


def detect_folder_architecture(
    model_index: Config, unet_config: Config, transformer_config: Config | None = None
) -> Architecture | None:
    """The family of a diffusers folder, from its model_index and UNet config (empty for
    the transformer families) or transformer config."""
    flow = _FLOW_PIPELINES.get(model_index.get("_class_name", ""))
    if flow is Architecture.FLUX1 and (transformer_config or {}).get("guidance_embeds") is False:
        return Architecture.FLUX1_SCHNELL
    if flow is not None:
        return flow
    if "XL" in model_index.get("_class_name", "") or "text_encoder_2" in model_index:
        if model_index.get("requires_aesthetics_score") or (
            model_index.get("text_encoder", [None])[0] is None
        ):
            return Architecture.SDXL_REFINER
        return Architecture.SDXL
    cross = unet_config.get("cross_attention_dim")
    if cross == 1024 or unet_config.get("use_linear_projection"):
        return Architecture.SD2
    if model_index.get("_class_name", "").startswith("StableDiffusion"):
        return Architecture.SD1
    return None
