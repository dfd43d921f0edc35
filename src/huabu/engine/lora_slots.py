"""LoRAs on a compiled UNet: fixed slots, hot-swapped (HUABU_COMPILE).

A compiled graph holds the UNet's structure, so loading and deleting peft adapters (what
:class:`~huabu.engine.adapters.LoraSwitch` does) would recompile it at every new LoRA. Here the
UNet has one adapter per slot (``slot_0`` … up to the most LoRAs one request has used), padded
to ``HUABU_LORA_MAX_RANK``, its strengths held in tensors. A request's LoRAs replace the
weights of slots in place (peft's hot-swap) and set the strengths by filling those tensors:
neither changes the graph. A LoRA already in a slot is not loaded again. A request without
LoRAs runs with the slots disabled (its own graph variant, compiled once).

What changes the graph, once each: a new slot (a request with more LoRAs than ever before), a
LoRA that targets layers its slot's first LoRA did not, or one of a rank above the padding; each
is reloaded into its slot, with a log line saying why.

Text encoders are not compiled: their share of a LoRA is a named adapter there, as in
``LoraSwitch``.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from diffusers.utils.peft_utils import (
    delete_adapter_layers,
    set_adapter_layers,
    set_weights_and_activate_adapters,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.hotswap import prepare_model_for_compiled_hotswap

from huabu.catalog.library import ModelLibrary
from huabu.engine import compiling
from huabu.engine.adapters import MAX_LOADED, adapter_name
from huabu.errors import ModelUnavailable
from huabu.native import LoraRef

log = logging.getLogger("huabu.engine")


class LoraSlots:
    """The LoRA slots of one compiled pipeline, and the switch that applies them."""

    def __init__(self, pipe: Any, library: ModelLibrary, max_rank: int) -> None:
        self.pipe = pipe
        self.library = library
        self.max_rank = max_rank
        #: The LoRA each slot holds ("" none; slot i is the UNet adapter ``slot_i``).
        self.slots: list[str] = []
        #: Per slot, each LoRA layer's strength-1 scaling for the LoRA the slot holds.
        self._scalings: list[dict[Any, float]] = []
        #: LoRA name → its text-encoder adapter, for the LoRAs that have a text-encoder part.
        self.text: OrderedDict[str, str] = OrderedDict()
        #: LoRAs with text-encoder weights only (they take no slot).
        self.text_only: set[str] = set()
        #: Loads into a slot: swapped in place, and reloaded (a graph change).
        self.swaps = 0
        self.reloads = 0

    @property
    def encoders(self) -> list[tuple[str, Any]]:
        pipe = self.pipe
        pairs = [
            ("text_encoder", pipe.text_encoder),
            ("text_encoder_2", getattr(pipe, "text_encoder_2", None)),
        ]
        return [(prefix, encoder) for prefix, encoder in pairs if encoder is not None]

    @contextmanager
    def applied(self, loras: tuple[LoraRef, ...]) -> Iterator[None]:
        """Within the block the pipeline runs with exactly ``loras``; after it, with none."""
        if not loras:
            yield
            return
        unet = self.pipe.unet
        compiling.unfuse(unet)
        weights = {lora.name: lora.weight for lora in loras}
        self._place(list(weights))
        for index, name in enumerate(self.slots):
            weight = weights.get(name, 0.0)  # a slot this request does not use: strength 0
            for module, scaling in self._scalings[index].items():
                module.scaling[f"slot_{index}"].fill_(scaling * weight)
        set_adapter_layers(unet, enabled=True)
        for _, encoder in self.encoders:
            held = getattr(encoder, "peft_config", {})
            present = {self.text[n]: w for n, w in weights.items() if self.text.get(n) in held}
            if present:
                set_weights_and_activate_adapters(encoder, list(present), list(present.values()))
                set_adapter_layers(encoder, enabled=True)
        try:
            yield
        finally:
            set_adapter_layers(unet, enabled=False)
            for _, encoder in self.encoders:
                if getattr(encoder, "peft_config", None):
                    set_adapter_layers(encoder, enabled=False)

    def _place(self, names: list[str]) -> None:
        """Put ``names`` into slots: those already in one stay, the others take the slots no
        name of this request holds, then new slots. A LoRA with only text-encoder weights
        needs no slot."""
        missing = [n for n in names if n not in self.slots and n not in self.text_only]
        free = [i for i, held in enumerate(self.slots) if held not in names]
        for name in missing:
            state = self._state(name)
            self._load_text(name, state)
            if not any(key.startswith("unet.") for key in state[0]):
                self.text_only.add(name)
                continue
            self._fill(free.pop(0) if free else len(self.slots), name, state)

    def _state(self, name: str) -> tuple[dict, dict | None, dict | None]:
        entry = self.library.find("loras", name, param="loras")
        if entry.layout == "pickle":
            raise ModelUnavailable(f"LoRA {name!r} is a pickle; convert it to safetensors")
        xl = hasattr(self.pipe, "text_encoder_2")
        extra = {"unet_config": self.pipe.unet.config} if xl else {}
        try:
            state, alphas, metadata = self.pipe.lora_state_dict(
                str(entry.path), return_lora_metadata=True, **extra
            )
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(f"LoRA {name!r} is not a LoRA huabu can read") from exc
        return state, alphas, metadata

    def _fill(self, index: int, name: str, state: tuple[dict, dict | None, dict | None]) -> None:
        """Load LoRA ``name`` into slot ``index``: in place if the slot holds a LoRA and this
        one fits it, else as a new adapter (the graph changes)."""
        unet, slot = self.pipe.unet, f"slot_{index}"
        tensors, alphas, metadata = state
        rank = max(
            (
                t.shape[0]
                for k, t in tensors.items()
                if k.startswith("unet.") and ("lora_A" in k or "lora.down" in k)
            ),
            default=0,
        )
        if rank > self.max_rank:
            raise ModelUnavailable(
                f"LoRA {name!r} has rank {rank}, above HUABU_LORA_MAX_RANK={self.max_rank} "
                "(compiled models pad LoRAs to that rank)"
            )
        load = dict(
            network_alphas=alphas,
            unet=unet,
            adapter_name=slot,
            metadata=metadata,
            _pipeline=self.pipe,
        )
        if index < len(self.slots) and self.slots[index]:
            try:
                self.pipe.load_lora_into_unet(tensors, hotswap=True, **load)
                self.swaps += 1
                self._remember(index, name)
                return
            except (ValueError, RuntimeError, KeyError) as exc:
                log.info(
                    "LoRA %s does not fit slot %d in place (%s): reloading it",
                    name,
                    index,
                    str(exc)[:200],
                )
                unet.delete_adapters([slot])
                self._remember(index, "")
        try:
            with warnings.catch_warnings():  # several adapters on one model is the design
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.pipe.load_lora_into_unet(tensors, **load)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"LoRA {name!r} does not fit this checkpoint or is not a LoRA"
            ) from exc
        prepare_model_for_compiled_hotswap(unet, target_rank=self.max_rank, check_compiled="ignore")
        names = [f"slot_{i}" for i in range(max(index + 1, len(self.slots)))]
        for module in unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([n for n in names if n in module.scaling])
        self.reloads += 1
        self._remember(index, name)

    def _remember(self, index: int, name: str) -> None:
        """Slot ``index`` holds LoRA ``name`` now ("": nothing); note its strength-1 scalings."""
        slot = f"slot_{index}"
        scalings = {
            module: float(module.scaling[slot])
            for module in self.pipe.unet.modules()
            if name and isinstance(module, BaseTunerLayer) and slot in module.scaling
        }
        if index == len(self.slots):
            self.slots.append(name)
            self._scalings.append(scalings)
        else:
            self.slots[index], self._scalings[index] = name, scalings

    def _load_text(self, name: str, state: tuple[dict, dict | None, dict | None]) -> None:
        """The text-encoder part of LoRA ``name`` (if any) as a named adapter."""
        tensors, alphas, metadata = state
        if name in self.text:
            self.text.move_to_end(name)
            return
        adapter = adapter_name(name)
        loaded = False
        for prefix, encoder in self.encoders:
            if any(key.startswith(f"{prefix}.") for key in tensors):
                try:
                    self.pipe.load_lora_into_text_encoder(
                        tensors,
                        network_alphas=alphas,
                        text_encoder=encoder,
                        prefix=prefix,
                        adapter_name=adapter,
                        _pipeline=self.pipe,
                        metadata=metadata,
                    )
                except (ValueError, KeyError, RuntimeError) as exc:
                    raise ModelUnavailable(
                        f"LoRA {name!r} does not fit this checkpoint's text encoder"
                    ) from exc
                loaded = True
        if not loaded:
            return
        self.text[name] = adapter
        while len(self.text) > MAX_LOADED:
            _, old = self.text.popitem(last=False)
            for _, encoder in self.encoders:
                if old in getattr(encoder, "peft_config", {}):
                    delete_adapter_layers(encoder, old)
