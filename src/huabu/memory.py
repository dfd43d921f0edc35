"""Memory a long-running process gives back.

glibc's malloc raises its mmap threshold to the size of each large block freed (up to 32 MiB),
and its trim threshold to twice that: after one 24 MB buffer is freed, every buffer up to that
size comes from the heap, and what is freed there stays resident. A server that now and then
holds a large request body, a decoded image or a tensor grows by each new peak and never
shrinks (a 22-minute soak of ``huabu serve``: +60 MB in three steps, each a new peak).
``malloc_trim`` hands the free pages of every arena back to the system; ``huabu serve`` and
``huabu worker`` call it once a minute, on a thread of its own (it takes milliseconds).
Fixing the thresholds instead would map and unmap every large tensor on CPU workers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from collections.abc import Callable

#: How often a server or worker gives free memory back, seconds.
TRIM_SECONDS = 60.0


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs a subprocess)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # musl, macOS: their allocators give memory back on their own


def trim() -> bool:
    """Give the free memory of every malloc arena back to the system now. False where the C
    library is not glibc (nothing to do there)."""
    malloc_trim = _malloc_trim()
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


def trim_periodically(seconds: float = TRIM_SECONDS) -> None:
    """``trim`` every ``seconds`` on a daemon thread, for the life of the process."""
    if _malloc_trim() is None:
        return

    def loop() -> None:
        while True:
            time.sleep(seconds)
            trim()

    threading.Thread(target=loop, name="huabu-trim", daemon=True).start()
