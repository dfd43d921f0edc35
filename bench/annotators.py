"""What the network preprocessors cost on this machine, at A1111's processor resolution.

    .venv/bin/python bench/annotators.py [--size 512] [--runs 3] [--only NAME]

Each annotator file is written in its published layout with random weights of the real
network's size (the published files cannot be downloaded here: the numbers are the networks'
cost, not their output), then each preprocessor runs on a portrait (matplotlib's sample
photograph) at ``--size``²: the first run (loading the file) and the median of the next runs,
and that median ÷ one 20-step generation of the demo model at the same size, measured side by
side. DWPose is left out (its stand-in graphs are not the real networks' size). Prints;
asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import matplotlib
import torch
from PIL import Image

from huabu import demos
from huabu.engine.annotators import Annotators, run
from huabu.engine.annotators.leres import Leres, MergeNet
from huabu.engine.annotators.midas import DptHybrid
from huabu.engine.annotators.normal_bae import NormalBae
from huabu.engine.annotators.zoe import ZoeDepth
from huabu.native import GenerationRequest
from huabu.settings import Settings

#: The annotator files written, and the preprocessors timed.
FILES = {
    "dpt_hybrid-midas-501f0c75.pt": DptHybrid,
    "scannet.pt": NormalBae,
    "res101.pth": Leres,
    "latest_net_G.pth": MergeNet,
    "ZoeD_M12_N.pt": ZoeDepth,
}
NAMES = ("depth_midas", "normal_bae", "depth_leres", "depth_leres++", "depth_zoe", "mediapipe_face")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=NAMES, help="time this preprocessor alone")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="huabu-annotators-"))
    for file_name, network in FILES.items():
        torch.save({k: v.half() for k, v in network().state_dict().items()}, folder / file_name)
    annotators = Annotators(lambda name: folder / name, torch.device("cpu"))
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = Image.open(photo).convert("RGB").resize((args.size, args.size))

    from huabu.engine.engine import Engine

    home = Path(tempfile.mkdtemp(prefix="huabu-bench-"))
    demos.build(Settings(home=home))
    engine = Engine(Settings(home=home))
    request = GenerationRequest(
        model="demo",
        prompt="a portrait",
        width=args.size,
        height=args.size,
        steps=20,
        seed=1,
        sampler="Euler",
    )
    engine.generate(request)  # load
    generation = statistics.median(
        _timed(lambda: engine.generate(request)) for _ in range(args.runs)
    )
    print(
        f"demo generation, 20 steps at {args.size}²: {generation:.2f} s "
        f"({torch.get_num_threads()} threads)"
    )
    for name in [args.only] if args.only else NAMES:
        first = _timed(lambda n=name: run(n, image, annotators=annotators))
        again = statistics.median(
            _timed(lambda n=name: run(n, image, annotators=annotators)) for _ in range(args.runs)
        )
        print(
            f"{name:15} first (with loading) {first:6.2f} s   then {again:6.2f} s   "
            f"÷ a generation ×{again / generation:.2f}"
        )


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
