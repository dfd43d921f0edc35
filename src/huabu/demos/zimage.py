"""The offline Z-Image demo: a tiny Z-Image (a single-stream DiT reading a Qwen3 text model's
hidden states) with random, seeded weights.

Z-Image reads the prompt through Qwen3's chat template, so the demo's tokenizer is a byte-level
BPE (Qwen's kind) trained at build time on the shipped CLIP vocabulary's words, with Qwen's
``<|im_start|>``/``<|im_end|>`` markers and a chat template of their shape.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from huabu.demos.flux import TINY_VAE, write_with_lora
from huabu.engine.single_file import tokenizer_files

DEMO_Z_IMAGE = "demo-z-image"
_SEED = 20251203
_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_TRANSFORMER = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 4,
    "dim": 32,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 32,
    "axes_dims": [4, 6, 6],
    "axes_lens": [256, 128, 128],
}
#: The flow demos' VAE with 4 latent channels and FLUX's scaling (Z-Image uses FLUX's VAE).
_VAE = TINY_VAE | {"latent_channels": 4, "shift_factor": 0.1159, "scaling_factor": 0.3611}
_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,
}


def qwen_tokenizer(work: Path, specials: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's chat markers (and ``specials`` after them) and a
    chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    words = json.loads((tokenizer_files() / "vocab.json").read_text())
    stems = (w.removesuffix("</w>") for w in words if w.endswith("</w>"))
    corpus = sorted(stem for stem in stems if stem.isalpha())
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=[*_SPECIALS, *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    model.train_from_iterator(corpus, trainer=trainer)
    file = work / "qwen.json"
    model.save(str(file))
    made = PreTrainedTokenizerFast(
        tokenizer_file=str(file), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    made.chat_template = _CHAT
    return made


def build_pipeline(seed: int = _SEED) -> ZImagePipeline:
    """The Z-Image demo pipeline in memory, identical for the same seed."""
    with tempfile.TemporaryDirectory() as work:
        tokenizer = qwen_tokenizer(Path(work))
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(**_TRANSFORMER)
        text = Qwen3Model(Qwen3Config(**(_TEXT | {"vocab_size": len(tokenizer)})))
        return ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=AutoencoderKL(**_VAE),
            text_encoder=text,
            tokenizer=tokenizer,
            transformer=transformer,
        )


#: Where its demo LoRA trains: attention and feed-forward layers of the transformer.
_LORA_LAYERS = (
    "layers.0.attention.to_q",
    "layers.0.attention.to_v",
    "layers.0.feed_forward.w2",
    "layers.1.attention.to_out.0",
    "context_refiner.0.attention.to_k",
)


def build(models: Path, *, force: bool = False) -> list[Path]:
    """Write the Z-Image demo folder and its LoRA under ``models`` (each if missing, or both
    with ``force``); returns the paths written."""
    return write_with_lora(
        models, DEMO_Z_IMAGE, build_pipeline, _LORA_LAYERS, _SEED + 1, force=force
    )
