"""What a ``.safetensors`` (or ``.gguf``) file says about itself, read from its header alone:
tensor names, shapes and metadata. No tensor is read and nothing here imports torch, so API
processes can describe a library of multi-GB checkpoints in milliseconds."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huabu.catalog.architectures import Architecture, detect_architecture
from huabu.catalog.split_files import transformer_architecture
from huabu.errors import ModelUnavailable

#: The safetensors metadata key of config overrides (JSON, by component: ``{"unet": {…}}``).
METADATA_KEY = "huabu.config"
#: A header larger than this is not one a real checkpoint has (SDXL's is about 300 KB).
MAX_HEADER_BYTES = 100 * 2**20


@dataclass(frozen=True)
class CheckpointHeader:
    """The tensor shapes and ``__metadata__`` of a safetensors file."""

    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]

    @classmethod
    def read(cls, path: Path) -> CheckpointHeader:
        """Parse the header (8 bytes of length, then JSON; or a GGUF file's tensor infos and
        key-values), or ModelUnavailable naming the file by its name only."""
        if path.suffix == ".gguf":
            return cls._read_gguf(path)
        try:
            with path.open("rb") as handle:
                prefix = handle.read(8)
                if len(prefix) != 8:
                    raise ValueError("shorter than a safetensors header")
                (length,) = struct.unpack("<Q", prefix)
                if length > MAX_HEADER_BYTES:
                    raise ValueError("header length out of range")
                raw = handle.read(length)
                if len(raw) != length:
                    raise ValueError("truncated header")
            header = json.loads(raw)
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            metadata = header.pop("__metadata__", None) or {}
            shapes = {key: tuple(int(n) for n in value["shape"]) for key, value in header.items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ModelUnavailable(
                f"{path.name} is not a readable safetensors file ({reason})"
            ) from None
        return cls(shapes, {str(k): str(v) for k, v in metadata.items()})

    @classmethod
    def _read_gguf(cls, path: Path) -> CheckpointHeader:
        """A GGUF file's tensor names and shapes (in torch's order: GGUF lists the innermost
        dimension first) and its string key-values as metadata."""
        from gguf import GGUFReader, GGUFValueType

        try:
            reader = GGUFReader(path)
            shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
            metadata = {
                key: str(field.contents())
                for key, field in reader.fields.items()
                if field.types == [GGUFValueType.STRING]
            }
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise ModelUnavailable(f"{path.name} is not a readable GGUF file ({exc})") from None
        return cls(shapes, metadata)

    def architecture(self, name: str = "") -> Architecture | None:
        """The family of an original-layout checkpoint, or of a FLUX.1 transformer alone (whose
        file ``name`` tells Kontext apart)."""
        keys = set(self.shapes)
        return detect_architecture(keys) or transformer_architecture(keys, name)

    def overrides(self, sidecar: Path | None = None) -> dict[str, dict[str, Any]]:
        """Config values the shapes cannot tell, by component: from the file's metadata
        (``huabu.config``), then a ``<name>.json`` sidecar (which wins)."""
        found: dict[str, dict[str, Any]] = {}
        try:
            if METADATA_KEY in self.metadata:
                found.update(json.loads(self.metadata[METADATA_KEY]))
            if sidecar is not None and sidecar.is_file():
                for component, values in json.loads(sidecar.read_text()).items():
                    found.setdefault(component, {}).update(values)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelUnavailable(f"unreadable config overrides ({exc})") from None
        if not all(isinstance(v, dict) for v in found.values()):
            raise ModelUnavailable("config overrides must be objects per component")
        return found
