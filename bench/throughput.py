"""Throughput benchmark: images/s with cross-request batching against one request at a time.

    .venv/bin/python bench/throughput.py [--clients 8] [--tasks 48] [--sizes 64 256] [--rounds 2]

8 concurrent clients each submit a generation over HTTP (same shape: demo model, 20 steps,
Euler a; each its own prompt and seed), wait for it to finish, and submit the next, until
``--tasks`` have finished. The same load runs against `huabu serve` (worker inside) with
``HUABU_MAX_BATCH=8`` (and ``HUABU_BATCH_WAIT_MS``) and with ``HUABU_MAX_BATCH=1``; the two
servers run one after the other, never together, alternating over ``--rounds``, and the
median of the rounds is reported. Goal: ≥ 2× images/s at 64² on the 2-core CPU.
Uses the demo model under a temporary HUABU_HOME; prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from huabu import demos  # noqa: E402
from huabu.settings import Settings  # noqa: E402
from serving import Server, stop_embedded_postgres  # noqa: E402

PROMPTS = ["a red fox in the snow", "a lighthouse at night", "a bowl of ramen",
           "a city street in the rain", "a cat on a windowsill", "mountains at dawn",
           "a sailing boat", "a field of sunflowers"]  # fmt: skip


async def load(url: str, clients: int, tasks: int, size: int) -> tuple[float, list[int]]:
    """Seconds for ``tasks`` tasks from ``clients`` clients, and the batch sizes they ran in."""
    left = tasks
    sizes: list[int] = []

    async def client(index: int) -> None:
        nonlocal left
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            n = 0
            while left > 0:
                left -= 1
                body = {
                    "model": "demo",
                    "prompt": PROMPTS[index % len(PROMPTS)],
                    "seed": index * 1000 + n,
                    "width": size,
                    "height": size,
                    "steps": 20,
                    "sampler": "Euler a",
                }
                task = (await http.post("/huabu/v1/generations", json=body)).json()
                while task["state"] not in ("succeeded", "failed", "cancelled"):
                    task = (
                        await http.get(f"/huabu/v1/tasks/{task['id']}", params={"wait": 10})
                    ).json()
                assert task["state"] == "succeeded", task
                sizes.append(task["batch_size"])
                n += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return time.perf_counter() - start, sizes


def measure(home: Path, env: dict[str, str], clients: int, tasks: int, size: int):
    server = Server(home, {"HUABU_THREADS": "2", "HUABU_ANONYMOUS": "true"} | env)
    try:
        asyncio.run(load(server.url, clients, clients, size))  # warm-up: load, first batches
        seconds, sizes = asyncio.run(load(server.url, clients, tasks, size))
    finally:
        server.stop()
    return tasks / seconds, statistics.mean(sizes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=48)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wait-ms", type=int, default=50)
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="huabu-bench-"))
    demos.build(Settings(home=home))
    configs = {
        "batched": {
            "HUABU_MAX_BATCH": str(args.clients),
            "HUABU_BATCH_WAIT_MS": str(args.wait_ms),
        },
        "one at a time": {"HUABU_MAX_BATCH": "1"},
    }
    print(
        f"{args.clients} clients, {args.tasks} tasks per measurement, 20 steps, demo model; "
        f"batched: HUABU_MAX_BATCH={args.clients}, "
        f"HUABU_BATCH_WAIT_MS={args.wait_ms}"
    )
    try:
        for size in args.sizes:
            rates: dict[str, list[float]] = {name: [] for name in configs}
            batch_sizes: dict[str, list[float]] = {name: [] for name in configs}
            for round_ in range(args.rounds):
                order = list(configs) if round_ % 2 == 0 else list(reversed(configs))
                for name in order:
                    rate, mean_batch = measure(home, configs[name], args.clients, args.tasks, size)
                    rates[name].append(rate)
                    batch_sizes[name].append(mean_batch)
            batched, alone = (statistics.median(rates[name]) for name in configs)
            print(
                f"{size}x{size}: batched {batched:.2f} images/s (mean batch "
                f"{statistics.mean(batch_sizes['batched']):.1f}), one at a time {alone:.2f} "
                f"images/s: ratio {batched / alone:.2f}" + (" (goal >= 2)" if size == 64 else "")
            )
    finally:
        stop_embedded_postgres(home)


if __name__ == "__main__":
    main()
