"""Upscaler benchmark: a 4× tiled upscale against spandrel's model run whole.

    .venv/bin/python bench/upscalers.py [--size 1024]

The demo upscaler (a tiny Real-ESRGAN, 4×) on a ``size``² image: huabu's tiled run (192²
tiles, 10 px of context) and the same model on the whole image at once, each in a process of
its own so that its peak memory (max RSS) is its own. Prints seconds, peak memory and the
ratios, and how far the two results differ; asserts nothing.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path


def _run(path: str, size: int, tiled: bool, out: multiprocessing.Queue) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from huabu.engine import upscalers

    torch.set_num_threads(2)
    descriptor = upscalers.load(Path(path), torch.device("cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    tile = upscalers.TILE if tiled else size
    result = upscalers.run_tiled(descriptor, image, tile=tile)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put((seconds, before / 1024, peak / 1024, np.asarray(result)[::97, ::97].copy()))


def measure(path: Path, size: int, tiled: bool) -> tuple[float, float, float, object]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(str(path), size, tiled, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    from huabu.demos import upscalers as demo

    with tempfile.TemporaryDirectory() as home:
        [path] = demo.build(Path(home))
        tiled = measure(path, args.size, tiled=True)
        whole = measure(path, args.size, tiled=False)
    import numpy as np

    difference = int(np.abs(tiled[3].astype(int) - whole[3].astype(int)).max())
    side = 4 * args.size
    print(f"demo-upscaler 4x, {args.size}² -> {side}²")
    print(f"{'run':7} {'seconds':>8} {'MiB before':>11} {'MiB peak':>9} {'peak - before':>14}")
    for name, (seconds, before, peak, _) in (("tiled", tiled), ("whole", whole)):
        print(f"{name:7} {seconds:8.2f} {before:11.0f} {peak:9.0f} {peak - before:14.0f}")
    print(
        f"tiled ÷ whole: time {tiled[0] / whole[0]:.2f}, added memory "
        f"{(tiled[2] - tiled[1]) / max(whole[2] - whole[1], 1):.3f}; "
        f"largest pixel difference {difference}"
    )


if __name__ == "__main__":
    main()
