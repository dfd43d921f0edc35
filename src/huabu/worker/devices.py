"""``huabu worker --devices cuda:0,cuda:1`` (or ``all``): one worker process per device on
this host, each a ``huabu worker`` with its own ``HUABU_DEVICE``, sharing the host's
``HUABU_HOME`` (models and the converted-model cache on disk). Separate processes, not threads:
each device gets its own CUDA context and its own memory, and a crash of one (out of memory,
a driver error) leaves the others running; this process restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("huabu.worker")

#: A worker that dies sooner than this after its start is restarted only after a pause.
_QUICK_DEATH_SECONDS = 30.0


def expand(devices: str) -> list[str]:
    """``"all"`` as every CUDA device here (or ``["cpu"]`` without one); otherwise the
    comma-separated list, each checked the way torch reads it."""
    if devices.strip() == "all":
        import torch

        count = torch.cuda.device_count()
        return [f"cuda:{index}" for index in range(count)] or ["cpu"]
    found = [part.strip() for part in devices.split(",") if part.strip()]
    if not found:
        raise ValueError("--devices: name at least one device (cuda:0,cuda:1 or all)")
    for device in found:
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda", "mps", "xpu") or (index and not index.isdigit()):
            raise ValueError(f"--devices: {device!r} is not a device (cpu, cuda, cuda:1, mps)")
    return found


def run(devices: list[str]) -> int:
    """Run one worker per device until SIGTERM/SIGINT; restart any that exits by itself."""
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    #: One slot per device named (the same device may be named twice: two workers on it).
    children: dict[int, tuple[subprocess.Popen, float]] = {}

    def start(slot: int) -> None:
        env = os.environ | {"HUABU_DEVICE": devices[slot]}
        command = [sys.executable, "-m", "huabu", "worker"]
        children[slot] = (subprocess.Popen(command, env=env), time.monotonic())
        log.info("worker for %s started (process %d)", devices[slot], children[slot][0].pid)

    for slot in range(len(devices)):
        start(slot)
    while not stopping:
        time.sleep(0.5)
        for slot, (child, started) in list(children.items()):
            code = child.poll()
            if code is None or stopping:
                continue
            log.warning(
                "the worker for %s exited (code %s); starting it again", devices[slot], code
            )
            if time.monotonic() - started < _QUICK_DEATH_SECONDS:
                time.sleep(5)  # not a tight loop if it cannot start at all
            start(slot)
    for child, _ in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child, _ in children.values():
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
