"""The ControlNet preprocessor names huabu knows, which run here, and what each needs: what the
API process checks at submit (torch-free). Running them is :mod:`huabu.engine.annotators`,
whose families' specs this table is tested against.

A preprocessor that runs a network needs its weights in ``models/annotators/`` (the file names
of lllyasviel/Annotators, as sd-webui-controlnet and controlnet_aux download them). Annotator
files are a model kind like the others: workers advertise them and ``huabu models publish``
shares them with a fleet, so a preprocessor is available when some worker holds its files.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable

from huabu.errors import InvalidRequest

#: Preprocessors that need no weights (OpenCV, or the image itself).
WEIGHTLESS = ("none", "canny", "shuffle", "lineart_standard")
#: Preprocessors that run a network here, and the annotator files it loads.
NETWORKS: dict[str, tuple[str, ...]] = {
    "softedge_hed": ("ControlNetHED.pth",),
    "softedge_hedsafe": ("ControlNetHED.pth",),
    "scribble_hed": ("ControlNetHED.pth",),
    "scribble_hedsafe": ("ControlNetHED.pth",),
    "lineart_realistic": ("sk_model.pth",),
    "lineart": ("sk_model.pth",),  # sd-webui-controlnet's name for lineart_realistic
    "lineart_coarse": ("sk_model2.pth",),
    "softedge_pidinet": ("table5_pidinet.pth",),
    "softedge_pidsafe": ("table5_pidinet.pth",),
    "scribble_pidinet": ("table5_pidinet.pth",),
    "scribble_pidsafe": ("table5_pidinet.pth",),
    "lineart_anime": ("netG.pth",),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    # OpenPose: the body network always (hands and faces are found from the body's joints).
    "openpose": ("body_pose_model.pth",),
    "openpose_hand": ("body_pose_model.pth", "hand_pose_model.pth"),
    "openpose_face": ("body_pose_model.pth", "facenet.pth"),
    "openpose_faceonly": ("body_pose_model.pth", "facenet.pth"),
    "openpose_full": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    # MiDaS DPT-Hybrid; "depth" is sd-webui-controlnet's name for it.
    "depth_midas": ("dpt_hybrid-midas-501f0c75.pt",),
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    # LeReS's depth (ResNeXt-101 encoder).
    "depth_leres": ("res101.pth",),
    # ... boosted by merging several resolutions (Miangoleh et al.) with pix2pix's merge network.
    "depth_leres++": ("res101.pth", "latest_net_G.pth"),
    # ZoeDepth's metric depth (MiDaS 3.1's DPT on a BEiT-L/16, and its metric bins head).
    "depth_zoe": ("ZoeD_M12_N.pt",),
    # Bae et al.'s surface normals (EfficientNet-B5 encoder).
    "normal_bae": ("scannet.pt",),
    # DWPose: the ONNX files sd-webui-controlnet and comfyui_controlnet_aux run.
    "dwpose": ("yolox_l.onnx", "dw-ll_ucoco_384.onnx"),
}
#: Preprocessors whose network ships in a Python package (its own model files), not in
#: ``models/annotators/``: the package each needs.
PACKAGES: dict[str, str] = {"mediapipe_face": "mediapipe"}


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported here (found, not imported: an API process must
    not load a worker's libraries)."""
    return importlib.util.find_spec(package) is not None


def stem(file_name: str) -> str:
    """An annotator file's name in the model library (its stem, as every model's)."""
    return file_name.rsplit(".", 1)[0]


def held_annotators(names: Iterable[str], library_names: Callable[[str], list[str]]) -> set[str]:
    """The annotator files the library has (``library_names("annotators")``), read only when
    one of the preprocessors ``names`` runs a network: what ``check`` needs to know."""
    if not any(name in NETWORKS for name in names):
        return set()
    return set(library_names("annotators"))


def missing(name: str, held: set[str]) -> list[str]:
    """The files preprocessor ``name`` needs that are not among ``held`` (library names)."""
    return [f for f in NETWORKS.get(name, ()) if stem(f) not in held]


def listing(held: set[str]) -> list[dict[str, object]]:
    """Every preprocessor name huabu knows, whether it runs here, and if not, what it needs.
    ``held``: the annotator files the fleet has (library names)."""
    found: list[dict[str, object]] = [
        {"name": name, "available": True, "needs": None} for name in WEIGHTLESS
    ]
    for name in sorted(NETWORKS):
        lacking = missing(name, held)
        needs = ", ".join(f"models/annotators/{f}" for f in lacking) or None
        found.append({"name": name, "available": not lacking, "needs": needs})
    for name, package in sorted(PACKAGES.items()):
        there = _installed(package)
        needs = None if there else f"the Python package {package} (make install installs it)"
        found.append({"name": name, "available": there, "needs": needs})
    return found


def available(held: set[str]) -> list[str]:
    return [item["name"] for item in listing(held) if item["available"]]  # type: ignore[misc]


def check(name: str, held: set[str], *, param: str) -> None:
    """InvalidRequest naming ``param`` unless ``name`` can run with the annotator files
    ``held`` (library names)."""
    if name in WEIGHTLESS:
        return
    if name in NETWORKS:
        lacking = missing(name, held)
        if lacking:
            files = " and ".join(f"models/annotators/{f}" for f in lacking)
            plural = "s" if len(lacking) > 1 else ""
            raise InvalidRequest(
                f"{param}: preprocessor {name!r} needs the annotator file{plural} {files}, "
                "which this server does not have (lllyasviel/Annotators' files of those names)",
                param=param,
            )
        return
    if name in PACKAGES:
        if not _installed(PACKAGES[name]):
            raise InvalidRequest(
                f"{param}: preprocessor {name!r} needs the Python package {PACKAGES[name]!r}, "
                "which this server does not have installed",
                param=param,
            )
        return
    runs = ", ".join(available(held))
    raise InvalidRequest(
        f"{param}: unknown preprocessor {name!r}; available here: {runs}", param=param
    )
