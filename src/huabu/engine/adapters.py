"""LoRAs and textual-inversion embeddings on a cached pipeline.

LoRAs: loaded once as peft adapters, switched on for one request with
its strengths, switched off after it — no reload of the base weights, and nothing of one
request's LoRAs leaks into the next (a disabled peft adapter leaves its layer's output
bit-identical to the base layer's).
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huabu.catalog.library import ModelLibrary
from huabu.engine import compiling
from huabu.errors import ModelUnavailable
from huabu.native import IpAdapterRef, LoraRef

log = logging.getLogger("huabu.engine")

#: Adapters kept loaded per checkpoint; the least recently used beyond this are deleted.
MAX_LOADED = 16


def adapter_name(name: str) -> str:
    """A peft-safe adapter name (no dots: peft uses them as module paths)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return f"lora_{safe}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


class LoraSwitch:
    """The LoRAs loaded into one cached pipeline, and the switch that applies them."""

    def __init__(self, pipe: Any, library: ModelLibrary) -> None:
        self.pipe = pipe
        self.library = library
        self.loaded: OrderedDict[str, str] = OrderedDict()  # LoRA name → adapter name

    def _load(self, name: str) -> str:
        if name in self.loaded:
            self.loaded.move_to_end(name)
            return self.loaded[name]
        entry = self.library.find("loras", name, param="loras")
        if entry.layout == "pickle":
            raise ModelUnavailable(f"LoRA {name!r} is a pickle; convert it to safetensors")
        adapter = adapter_name(name)
        try:
            with warnings.catch_warnings():  # several adapters on one model is the design
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.pipe.load_lora_weights(str(entry.path), adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"LoRA {name!r} does not fit this checkpoint or is not a LoRA"
            ) from exc
        if not any(adapter in names for names in self.pipe.get_list_adapters().values()):
            # The loader found no layer of this model in the file (another family's LoRA).
            raise ModelUnavailable(f"LoRA {name!r} does not fit this checkpoint: no layer matches")
        self.loaded[name] = adapter
        while len(self.loaded) > MAX_LOADED:
            _, old = self.loaded.popitem(last=False)
            self.pipe.delete_adapters([old])
        return adapter

    @contextmanager
    def applied(self, loras: tuple[LoraRef, ...]) -> Iterator[None]:
        """Within the block the pipeline runs with exactly ``loras``; after it, with none."""
        if not loras:
            yield
            return
        adapters = [self._load(lora.name) for lora in loras]
        self.pipe.enable_lora()
        self.pipe.set_adapters(adapters, adapter_weights=[lora.weight for lora in loras])
        try:
            yield
        finally:
            self.pipe.disable_lora()


class Embeddings:
    """Textual-inversion embeddings loaded into one pipeline's tokenizer and text encoder.

    As in A1111, an embedding applies wherever its name appears in a prompt. It is loaded the
    first time it is needed and stays loaded: an added token changes no other token's
    embedding, so prompts that do not name it give bit-identical results."""

    def __init__(self, pipe: Any, library: ModelLibrary) -> None:
        self.pipe = pipe
        self.library = library
        #: SDXL: an embedding holds vectors for both encoders (``clip_l``, ``clip_g``).
        self.xl = getattr(pipe, "text_encoder_2", None) is not None
        self.loaded: set[str] = set()

    def prepare(self, prompts: list[str], listed: tuple[str, ...]) -> list[str]:
        """Load the embeddings ``prompts`` name (and those ``listed``); return the prompts with
        multi-vector embeddings expanded to their tokens."""
        names = set(listed)
        for name in self.library.names("embeddings"):
            word = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            if any(word.search(prompt) for prompt in prompts):
                names.add(name)
        for name in sorted(names - self.loaded):
            self._load(name)
        if not self.loaded:
            return prompts
        tokenizer = self.pipe.tokenizer or self.pipe.tokenizer_2  # a refiner has the second only
        return [self.pipe.maybe_convert_prompt(prompt, tokenizer) for prompt in prompts]

    def _load(self, name: str) -> None:
        entry = self.library.find("embeddings", name, param="embeddings")
        if entry.layout == "pickle" and not self.library.settings.allow_pickle:
            raise ModelUnavailable(
                f"embedding {name!r} is a pickle (.pt); allow it with HUABU_ALLOW_PICKLE=true "
                "or convert it to safetensors"
            )
        try:
            if self.xl:
                self._load_xl(entry.path, name)
            else:
                self.pipe.load_textual_inversion(str(entry.path), token=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"embedding {name!r} does not fit this checkpoint or is not an embedding"
            ) from exc
        self.loaded.add(name)

    def _load_xl(self, path: Path, name: str) -> None:
        """An SDXL embedding: its ``clip_l`` vectors go into the first encoder, ``clip_g``
        into the second, under the same token (checked before either is touched)."""
        import torch
        from safetensors.torch import load_file

        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        pipe = self.pipe
        parts = {
            "clip_l": (pipe.text_encoder, pipe.tokenizer),
            "clip_g": (pipe.text_encoder_2, pipe.tokenizer_2),
        }
        parts = {k: v for k, v in parts.items() if v[0] is not None}  # a refiner: clip_g only
        vectors = {key: state.get(key) for key in parts}
        widths = {
            key: encoder.get_input_embeddings().embedding_dim for key, (encoder, _) in parts.items()
        }
        if (
            any(
                not isinstance(v, torch.Tensor) or v.ndim != 2 or v.shape[1] != widths[key]
                for key, v in vectors.items()
            )
            or len({len(v) for v in vectors.values()}) != 1
        ):
            wanted = " and ".join(f"{key} ({width} wide)" for key, width in widths.items())
            raise ModelUnavailable(
                f"embedding {name!r} is not an SDXL embedding: SDXL models need {wanted} vectors"
            )
        for key, (encoder, tokenizer) in parts.items():
            pipe.load_textual_inversion(
                vectors[key], token=name, text_encoder=encoder, tokenizer=tokenizer
            )


class IpAdapter:
    """An IP-Adapter loaded for one request and unloaded after it (loading the demo's takes
    50 ms, unloading 3 ms): a UNet with an adapter loaded cannot run without an image, so
    keeping one loaded would change every other request."""

    def __init__(self, pipe: Any, library: ModelLibrary) -> None:
        self.pipe = pipe
        self.library = library

    @contextmanager
    def applied(self, ref: IpAdapterRef | None) -> Iterator[None]:
        if ref is None:
            yield
            return
        entry = self.library.find("ipadapter", ref.name, param="ip_adapter.name")
        compiling.unfuse(self.pipe.unet)
        weights = sorted(entry.path.glob("*.safetensors")) if entry.path.is_dir() else []
        if not weights or not (entry.path / "image_encoder").is_dir():
            raise ModelUnavailable(
                f"IP-Adapter {ref.name!r} is incomplete: its folder models/ipadapter/{ref.name}/ "
                "needs the adapter .safetensors and an image_encoder/ folder"
            )
        try:
            self.pipe.load_ip_adapter(
                str(entry.path),
                subfolder="",
                weight_name=weights[0].name,
                image_encoder_folder="image_encoder",
                local_files_only=True,
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"IP-Adapter {ref.name!r} cannot be loaded: it does not fit this checkpoint or "
                "is damaged"
            ) from exc
        self.pipe.set_ip_adapter_scale(ref.scale)
        try:
            with compiling.eager(self.pipe.unet):
                yield
        finally:
            self.pipe.unload_ip_adapter()
