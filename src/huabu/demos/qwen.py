"""The offline Qwen-Image demos: a tiny Qwen-Image (an MMDiT reading a Qwen2.5-VL model's
hidden states, a Wan-style VAE) with random, seeded weights, and the byte-level BPE tokenizer
of ``demos.zimage``; and a tiny Qwen-Image-Edit, the same transformer and VAE whose text
encoder also sees the image to edit (Qwen2.5-VL's vision tower, and the image markers in its
tokenizer)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from huabu.demos.flux import write_with_lora
from huabu.demos.sd import staged
from huabu.demos.zimage import qwen_tokenizer
from huabu.engine.vision_prompts import VisionPrompts

DEMO_QWEN_IMAGE = "demo-qwen-image"
DEMO_QWEN_IMAGE_EDIT = "demo-qwen-image-edit"
#: Qwen2.5-VL's image markers (the edit pipelines' prompt template has them).
_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")
_SEED = 20251204
_Z = 4  # latent channels (Qwen-Image's are 16)
_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": _Z * 4,
    "out_channels": _Z,
    "num_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 4, 4),
}
#: Three spatial halvings: 8× smaller latents, as Qwen-Image's VAE.
_VAE = {
    "base_dim": _Z * 6,
    "z_dim": _Z,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "latents_mean": [0.0] * _Z,
    "latents_std": [1.0] * _Z,
}
_SCHEDULER = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}


def _text_config(vocab: int) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": vocab,
            "rope_scaling": {"mrope_section": [2, 2, 4], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 32,
        },
        hidden_size=32,
        vocab_size=vocab,
        # The image markers lie outside the demo's vocabulary: it reads text only.
        vision_start_token_id=vocab + 1,
        vision_end_token_id=vocab + 2,
        vision_token_id=vocab + 3,
        image_token_id=vocab + 4,
        video_token_id=vocab + 5,
    )


def build_pipeline(seed: int = _SEED) -> QwenImagePipeline:
    """The Qwen-Image demo pipeline in memory, identical for the same seed."""
    with tempfile.TemporaryDirectory() as work:
        tokenizer = qwen_tokenizer(Path(work))
        torch.manual_seed(seed)
        return QwenImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**_SCHEDULER),
            vae=AutoencoderKLQwenImage(**_VAE),
            text_encoder=Qwen2_5_VLForConditionalGeneration(_text_config(len(tokenizer))),
            tokenizer=tokenizer,
            transformer=QwenImageTransformer2DModel(**_TRANSFORMER),
        )


#: Where its demo LoRA trains: attention and feed-forward layers of the transformer.
_LORA_LAYERS = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.img_mlp.net.2",
    "transformer_blocks.1.txt_mlp.net.2",
)


def build_edit_pipeline(seed: int = _SEED) -> QwenImageEditPipeline:
    """The Qwen-Image-Edit demo pipeline in memory (the Qwen-Image demo's transformer, so
    that its LoRA applies), identical for the same seed."""
    with tempfile.TemporaryDirectory() as work:
        tokenizer = qwen_tokenizer(Path(work), _VISION)
    config = _text_config(len(tokenizer))
    start, end, pad = tokenizer.convert_tokens_to_ids(list(_VISION))
    config.vision_start_token_id, config.vision_end_token_id = start, end
    config.image_token_id = pad
    base = build_pipeline(seed)
    torch.manual_seed(seed + 2)
    # A VAE a third as wide as the Qwen-Image demo's: the pipeline encodes the image to edit
    # at about a megapixel whatever the output size, which the narrower one does in a second.
    vae = AutoencoderKLQwenImage(**(_VAE | {"base_dim": _Z * 2}))
    # The image processor's own defaults, but for the largest image it reads: 112², not
    # 3,584² (the pipeline hands it the image at about a megapixel: 5,000 patches otherwise).
    images = Qwen2VLImageProcessorPil(max_pixels=112 * 112)
    return QwenImageEditPipeline(
        scheduler=base.scheduler,
        vae=vae,
        text_encoder=Qwen2_5_VLForConditionalGeneration(config),
        tokenizer=tokenizer,
        processor=VisionPrompts(images, tokenizer),
        transformer=base.transformer,
    )


def _write_edit(folder: Path) -> None:
    """The edit demo as Qwen-Image-Edit is published: ``processor/`` beside the components,
    named in ``model_index.json`` as transformers' ``Qwen2VLProcessor``."""
    pipe = build_edit_pipeline()
    components = {k: v for k, v in pipe.components.items() if k != "processor"}
    QwenImagePipeline(**components).save_pretrained(folder, safe_serialization=True)
    pipe.processor.save_pretrained(folder / "processor")
    index = json.loads((folder / "model_index.json").read_text())
    processor = ["transformers", "Qwen2VLProcessor"]
    index |= {"_class_name": "QwenImageEditPipeline", "processor": processor}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the Qwen-Image demo folder, its LoRA and the Qwen-Image-Edit demo under
    ``models`` (each if missing, or all with ``force``); returns the paths written."""
    written = write_with_lora(
        models, DEMO_QWEN_IMAGE, build_pipeline, _LORA_LAYERS, _SEED + 1, force=force
    )
    edit = models / "checkpoints" / DEMO_QWEN_IMAGE_EDIT
    if force or not edit.exists():
        with staged(edit) as staging:
            _write_edit(staging)
        written.append(edit)
    return written
