"""The ControlNet preprocessor names huabu knows, and which of them run here: what the API
process checks at submit. Running them is :mod:`huabu.engine.preprocessors` (OpenCV)."""

from __future__ import annotations

from huabu.errors import InvalidRequest

#: Spec 003's preprocessors that run a network huabu does not ship.
NEEDS_WEIGHTS = frozenset({
    "scribble_hed", "softedge_hed", "scribble_hedsafe", "softedge_hedsafe", "depth_midas", "mlsd",
    "openpose", "openpose_face", "openpose_faceonly", "openpose_full", "openpose_hand", "dwpose",
    "scribble_pidinet", "softedge_pidinet", "scribble_pidsafe", "softedge_pidsafe", "normal_bae",
    "lineart_coarse", "lineart_realistic", "lineart_anime", "lineart", "depth_zoe",
    "mediapipe_face", "depth", "depth_leres", "depth_leres++",
})  # fmt: skip
AVAILABLE = ("none", "canny", "shuffle", "lineart_standard")


def listing() -> list[dict[str, object]]:
    """Every preprocessor name huabu knows, whether it runs here, and if not, why not."""
    found: list[dict[str, object]] = [
        {"name": name, "available": True, "needs": None} for name in AVAILABLE
    ]
    found += [{"name": name, "available": False, "needs": "annotator weights"}
              for name in sorted(NEEDS_WEIGHTS)]  # fmt: skip
    return found


def check(name: str, *, param: str) -> None:
    """InvalidRequest naming ``param`` unless ``name`` can run here."""
    if name in AVAILABLE:
        return
    if name in NEEDS_WEIGHTS:
        raise InvalidRequest(
            f"{param}: preprocessor {name!r} needs annotator weights this server does not have; "
            f"available here: {', '.join(AVAILABLE)} (or send a ready control map with 'none')",
            param=param,
        )
    raise InvalidRequest(
        f"{param}: unknown preprocessor {name!r}; available here: {', '.join(AVAILABLE)}",
        param=param,
    )
