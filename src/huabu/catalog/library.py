"""The model library under ``$HUABU_HOME/models``: what is there, and what each thing is.

    models/checkpoints/   diffusers folders or single-file .safetensors (.ckpt/.pt: opt-in);
                          a FLUX.1 transformer alone (.safetensors or .gguf), its parts in
    models/text_encoders/ and models/vae/ (see ``catalog.split_files``)
    models/loras/  models/embeddings/  models/vae/  models/controlnet/
    models/ipadapter/<name>/   an adapter .safetensors and its image_encoder/ folder

A model's name is its file stem or folder name.

Private models live in per-owner folders, ``models/<kind>/@<owner id hex>/``: hidden from
listings, found only by their qualified name ``@<owner id hex>/<name>`` (see ``private_name``),
which the task service hands out to their owner alone. Trained LoRAs are kept there.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from huabu.catalog import split_files
from huabu.catalog.architectures import Architecture, detect_folder_architecture, native_size
from huabu.catalog.checkpoints import CheckpointHeader
from huabu.errors import InvalidRequest, ModelUnavailable
from huabu.native.generation import IMAGE_UPSCALERS, LATENT_UPSCALERS, upscaler_file
from huabu.settings import Settings

KINDS = (
    "checkpoints",
    "loras",
    "embeddings",
    "vae",
    "controlnet",
    "ipadapter",
    "annotators",
    "upscalers",
)
SAFE_SUFFIXES = (".safetensors",)
#: GGUF: a quantized FLUX.1 transformer (a checkpoint; see ``catalog.split_files``).
GGUF_SUFFIXES = (".gguf",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
#: ONNX graphs (DWPose's annotators): data that onnxruntime runs, no Python code in them.
ONNX_SUFFIXES = (".onnx",)
_PRIVATE_FOLDER = re.compile(r"@[0-9a-f]{32}")


@dataclass(frozen=True)
class ModelInfo:
    """What a model is: all a listing shows, and all an API server knows of a model that
    sits on a worker's disk (see ``catalog.shared``)."""

    name: str
    kind: str
    file_name: str  # the file or folder name, e.g. ``demo.safetensors``
    layout: str  # 'diffusers' | 'single-file' | 'pickle' | 'onnx'
    size_bytes: int
    architecture: Architecture | None
    #: The square side it was trained at (e.g. 1024 for SDXL); None if not a checkpoint.
    native_size: int | None
    #: When this version of it appeared (unix time): the file's mtime, or when described.
    modified: float

    @property
    def location(self) -> str:
        """Where it sits relative to ``models/`` (what listings show: never a server path)."""
        return f"{self.kind}/{self.file_name}"

    @property
    def describe_architecture(self) -> str:
        return self.architecture.label if self.architecture else "unknown"


@dataclass(frozen=True)
class ModelEntry(ModelInfo):
    """A model on this machine's disk: in the library, or in the download cache."""

    path: Path


def disk_size(path: Path) -> int:
    """Bytes of a model file, or of every file in a model folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _folder_architecture(path: Path) -> tuple[Architecture | None, int | None]:
    """A diffusers folder's family and native size."""
    try:
        index = json.loads((path / "model_index.json").read_text())
        # (The transformer families have no UNet.)
        unet = json.loads((path / "unet" / "config.json").read_text()) if "unet" in index else {}
        transformer = path / "transformer" / "config.json"
        transformer_config = json.loads(transformer.read_text()) if transformer.is_file() else {}
    except (OSError, ValueError):
        return None, None
    architecture = detect_folder_architecture(index, unet, transformer_config)
    return architecture, native_size(architecture, unet) if architecture else None


def _file_architecture(path: Path) -> tuple[Architecture | None, int | None]:
    """A single-file checkpoint's family and native size (from its overrides, if any)."""
    try:
        header = CheckpointHeader.read(path)
        architecture = header.architecture(path.name)
        if architecture is None:
            return None, None
        return architecture, native_size(
            architecture, header.overrides(path.with_suffix(".json")).get("unet")
        )
    except ModelUnavailable:
        return None, None


#: The text width a cross-attention takes, by family.
_TEXT_WIDTHS = {768: Architecture.SD1, 1024: Architecture.SD2, 2048: Architecture.SDXL}
_SDXL_MARKS = ("lora_te2_", "text_encoder_2.", "te2.", "clip_g")
#: FLUX.2's layers FLUX.1 lacks (its single blocks' fused projection, its shared modulation,
#: its feed-forward names), in the diffusers and kohya spellings: checked before FLUX.1's.
_FLUX2_MARKS = ("to_qkv_mlp_proj", "stream_modulation", "ff.linear_in", "ff_linear_in")
#: FLUX's two block kinds, in the diffusers, BFL/ai-toolkit and kohya layouts.
_FLUX_MARKS = (
    "single_transformer_blocks.",
    "double_blocks.",
    "single_blocks.",
    "double_blocks_",
    "single_blocks_",
)
#: Other flow families' LoRA layers, by names their transformers alone have (the diffusers and
#: kohya spellings): Qwen-Image's separate image and text streams, Z-Image's refiners and
#: ``attention``/``feed_forward`` blocks, SD 3's ``joint_blocks`` (its SAI layout; SD 3
#: LoRAs in the diffusers layout name layers FLUX.1's have too, and stay unknown).
_FLOW_MARKS = (
    (("img_mlp", "txt_mlp", "img_mod", "txt_mod"), Architecture.QWEN_IMAGE),
    (
        ("noise_refiner", "context_refiner", ".attention.to_", ".feed_forward.w"),
        Architecture.Z_IMAGE,
    ),
    (("joint_blocks",), Architecture.SD3),
)
_CROSS_ATTENTION = ("attn2.to_k.weight", "attn2.to_k.lora_A.weight", "attn2_to_k.lora_down.weight",
                    "to_k_ip.weight")  # fmt: skip


def _extra_architecture(path: Path) -> Architecture | None:
    """The family a LoRA, embedding, ControlNet or IP-Adapter was made for, where its files
    tell: SDXL's second text encoder or size conditioning, a flow family's layer names, else
    the width of the text its cross-attention takes (768 SD 1.x, 1024 SD 2.x, 2048 SDXL).
    None when they don't."""
    try:
        if path.is_dir():
            if (path / "config.json").is_file():  # a diffusers ControlNet
                config = json.loads((path / "config.json").read_text())
                if config.get("addition_embed_type") == "text_time":
                    return Architecture.SDXL
                return _TEXT_WIDTHS.get(config.get("cross_attention_dim"))
            weights = sorted(path.glob("*.safetensors"))  # an IP-Adapter
            if not weights:
                return None
            path = weights[0]
        shapes = CheckpointHeader.read(path).shapes
    except (OSError, ValueError, ModelUnavailable):
        return None
    if any(key.startswith(_SDXL_MARKS) or ".label_emb." in key for key in shapes):
        return Architecture.SDXL
    if any(mark in key for key in shapes for mark in _FLUX2_MARKS):
        return Architecture.FLUX2
    if any(mark in key for key in shapes for mark in _FLUX_MARKS):
        return Architecture.FLUX1
    for marks, architecture in _FLOW_MARKS:
        if any(mark in key for key in shapes for mark in marks):
            return architecture
    for key, shape in shapes.items():
        if key.endswith(_CROSS_ATTENTION) or (len(shapes) <= 2 and len(shape) == 2):
            return _TEXT_WIDTHS.get(shape[-1])  # (an embedding is its vectors alone)
    return None


def private_name(owner_id: uuid.UUID, name: str) -> str:
    """The qualified library name of ``owner_id``'s private model ``name``."""
    return f"@{owner_id.hex}/{name}"


class SharedModels(Protocol):
    """Published models a worker fetches on demand (``catalog.transfer.ModelCache``)."""

    def published_names(self, kind: str) -> list[str]: ...
    def find(self, kind: str, name: str) -> ModelEntry | None: ...


class ModelLibrary:
    kinds = KINDS

    def __init__(self, settings: Settings, shared: SharedModels | None = None) -> None:
        self.settings = settings
        self.root = settings.models_dir
        #: A worker's: published models it does not hold are found (downloaded) there.
        self.shared = shared
        self._hash_file: tuple[int, dict[str, str]] | None = None
        #: Described entries by (path, mtime, size): listing stays live (a model copied in
        #: appears at once) but headers and folder sizes are read once per version of a file.
        self._described: dict[tuple[Path, int, int], ModelEntry | None] = {}

    def ensure_folders(self) -> None:
        for kind in (*KINDS, "text_encoders"):
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    def entries(self, kind: str) -> list[ModelEntry]:
        """Every model of ``kind``, sorted by name. Unreadable files are listed as unknown."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith((".", "@")):  # hidden, or an owner's private folder
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed while we looked
                continue
            key = (path, stat.st_mtime_ns, stat.st_size)
            if key not in self._described:
                self._described[key] = self.describe(kind, path)
            entry = self._described[key]
            if entry is not None:
                found.append(entry)
        return found

    def describe(self, kind: str, path: Path) -> ModelEntry | None:
        checkpoint = kind == "checkpoints"
        if path.is_dir():
            if checkpoint and not (path / "model_index.json").is_file():
                return None
            arch, native = (
                _folder_architecture(path) if checkpoint else (_extra_architecture(path), None)
            )
            return ModelEntry(
                path.name,
                kind,
                path.name,
                "diffusers",
                disk_size(path),
                arch,
                native,
                path.stat().st_mtime,
                path,
            )
        if path.suffix in SAFE_SUFFIXES or (checkpoint and path.suffix in GGUF_SUFFIXES):
            arch, native = (
                _file_architecture(path) if checkpoint else (_extra_architecture(path), None)
            )
            return ModelEntry(
                path.stem,
                kind,
                path.name,
                "single-file",
                disk_size(path),
                arch,
                native,
                path.stat().st_mtime,
                path,
            )
        if path.suffix in PICKLE_SUFFIXES:
            return ModelEntry(
                path.stem,
                kind,
                path.name,
                "pickle",
                disk_size(path),
                None,
                None,
                path.stat().st_mtime,
                path,
            )
        if path.suffix in ONNX_SUFFIXES and kind == "annotators":
            return ModelEntry(
                path.stem,
                kind,
                path.name,
                "onnx",
                disk_size(path),
                None,
                None,
                path.stat().st_mtime,
                path,
            )
        return None

    def names(self, kind: str) -> list[str]:
        """The names of ``kind`` (a worker's include the published ones it can fetch)."""
        names = [entry.name for entry in self.entries(kind)]
        if self.shared is not None:
            names = sorted(set(names) | set(self.shared.published_names(kind)))
        return names

    def find(self, kind: str, name: str, *, param: str = "model") -> ModelEntry:
        """The entry called ``name``, or InvalidRequest (naming ``param``) listing what exists.
        A qualified private name finds that owner's model, and is never listed."""
        if name.startswith("@") and name.count("/") == 1:
            entry = self._private(kind, *name.split("/"))
            if entry is not None:
                return entry
        for entry in self.entries(kind):
            if entry.name == name:
                if kind == "checkpoints":
                    self.parts(entry)  # a part missing: refused now, naming it
                return entry
        if self.shared is not None:
            fetched = self.shared.find(kind, name)
            if fetched is not None:
                return fetched
        raise self.unknown(kind, name, param=param)

    def parts(self, entry: ModelEntry) -> dict[str, tuple[Path, str]]:
        """The parts of a split checkpoint (a flow family's single file), by component: (file,
        key prefix in it); none for any other; InvalidRequest naming the first one missing."""
        if entry.layout != "single-file" or not (entry.architecture and entry.architecture.is_flow):
            return {}
        header = CheckpointHeader.read(entry.path)
        overrides = header.overrides(entry.path.with_suffix(".json"))
        return split_files.parts(
            entry.path, self.root, overrides, set(header.shapes), entry.architecture
        )

    def default_model(self) -> str:
        """The checkpoint used when a request names none (HUABU_DEFAULT_MODEL, else the first)."""
        if self.settings.default_model:
            return self.settings.default_model
        names = self.names("checkpoints")
        if not names:
            raise InvalidRequest("the server has no checkpoint to generate with", param="model")
        return names[0]

    def unknown(self, kind: str, name: str, *, param: str) -> InvalidRequest:
        """The error for a name that is not in the library, listing what is."""
        return unknown_model(kind, name, self.names(kind), param=param)

    def _private(self, kind: str, folder: str, stem: str) -> ModelEntry | None:
        if not _PRIVATE_FOLDER.fullmatch(folder) or not stem or stem.startswith("."):
            return None
        for path in (self.root / kind / folder).glob(f"{glob.escape(stem)}.*"):
            entry = self.describe(kind, path)
            if entry is not None:
                return dataclasses.replace(entry, name=f"{folder}/{entry.name}")
        return None

    def model_hash(self, entry: ModelEntry) -> str | None:
        """A1111's short model hash (first 10 hex of the file's sha256)."""
        digest = self.sha256(entry)
        return digest[:10] if digest else None

    def sha256(self, entry: ModelEntry, *, compute: bool = True) -> str | None:
        """The sha256 of a single-file model (None for a folder), cached by size and mtime;
        ``compute=False``: only if already cached."""
        if not entry.path.is_file():
            return None
        stat = entry.path.stat()
        key = f"{entry.path}:{stat.st_size}:{stat.st_mtime_ns}"
        cache = self._hashes()
        if len(cache.get(key, "")) != 64:  # absent, or a short hash of an older version
            if not compute:
                return None
            cache = {**self._hashes(), key: file_sha256(entry.path)}
            cache_file = self.settings.cache_dir / "hashes.json"
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)  # worker processes on one host share the file
        return str(cache[key])

    def _hashes(self) -> dict[str, str]:
        """``cache/hashes.json``, parsed again only when it changed."""
        cache_file = self.settings.cache_dir / "hashes.json"
        try:
            version = cache_file.stat().st_mtime_ns
            if self._hash_file is None or self._hash_file[0] != version:
                self._hash_file = (version, json.loads(cache_file.read_text()))
        except (OSError, ValueError):
            return {}
        return self._hash_file[1]


def singular(kind: str) -> str:
    """How messages name one model of ``kind``."""
    return {"checkpoints": "model", "vae": "VAE"}.get(kind, kind.rstrip("s"))


def unknown_model(kind: str, name: str, available: list[str], *, param: str) -> InvalidRequest:
    """The error for a name that is not there, listing what is."""
    listed = ", ".join(available) or "none"
    return InvalidRequest(f"unknown {singular(kind)} {name!r}; available: {listed}", param=param)


def check_families(model: ModelInfo, refiner: ModelInfo | None) -> None:
    """What checkpoint families allow together: an SDXL refiner only continues an SDXL
    model's image, and only an SDXL model or refiner can be a refiner."""
    if model.architecture is Architecture.SDXL_REFINER:
        raise InvalidRequest(
            f"model: {model.name!r} is an SDXL refiner, which continues an SDXL model's image: "
            "name it as the refiner (refiner.model) of an SDXL model",
            param="model",
        )
    if refiner is None:
        return
    if model.architecture is not Architecture.SDXL:
        raise InvalidRequest(
            f"refiner: a refiner continues an SDXL model's image; {model.name!r} is "
            f"{model.describe_architecture}",
            param="refiner",
        )
    if refiner.architecture is None or not refiner.architecture.is_sdxl:
        raise InvalidRequest(
            f"refiner.model: {refiner.name!r} is {refiner.describe_architecture}, not an SDXL "
            "model or SDXL refiner",
            param="refiner.model",
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_upscaler(finder: Any, name: str, *, param: str) -> None:
    """A model upscaler's name (A1111's names for its own too) must be in ``finder``'s
    ``upscalers``: InvalidRequest naming ``param`` otherwise, with the file it would read."""
    if name in LATENT_UPSCALERS or name in IMAGE_UPSCALERS:
        return
    held = finder.names("upscalers")
    if upscaler_file(name) in held:
        return
    known = ", ".join([*LATENT_UPSCALERS, *IMAGE_UPSCALERS, *held])
    hint = (
        f" (it reads {upscaler_file(name)}.pth in models/upscalers/)"
        if name != upscaler_file(name)
        else ""
    )
    raise InvalidRequest(
        f"{param}: no upscaler {name!r} on this server{hint}; these are: {known}", param=param
    )
