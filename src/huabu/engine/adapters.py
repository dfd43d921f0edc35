"""LoRAs on a cached pipeline: loaded once as peft adapters, switched on for one request with
its strengths, switched off after it — no reload of the base weights, and nothing of one
request's LoRAs leaks into the next (a disabled peft adapter leaves its layer's output
bit-identical to the base layer's).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from huabu.engine.library import ModelLibrary
from huabu.errors import ModelUnavailable
from huabu.native import LoraRef

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
            self.pipe.load_lora_weights(str(entry.path), adapter_name=adapter)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise ModelUnavailable(
                f"LoRA {name!r} does not fit this checkpoint or is not a LoRA ({exc})"
            ) from exc
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
