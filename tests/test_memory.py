"""A long-running huabu process gives memory back after large, short-lived allocations
(``huabu.memory``: glibc's free pages trimmed), instead of growing by every new peak."""

import subprocess
import sys

import pytest

from huabu.memory import trim

PROBE = """
import sys
from huabu.memory import trim

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

big = b"x" * (24 << 20)  # one large body, freed: glibc raises its thresholds to it
del big
before = rss()
held = [b"y" * (6 << 20) for _ in range(6)]  # then buffers under that size, freed too
del held
if sys.argv[1] == "trimmed":
    trim()
print(rss() - before)
"""


@pytest.mark.skipif(not trim(), reason="glibc's malloc only")
def test_freed_buffers_go_back_to_the_system():
    def kept(mode: str) -> int:
        command = [sys.executable, "-c", PROBE, mode]
        return int(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    assert kept("untrimmed") >= 30  # MB that glibc keeps on its own (the test's premise)
    assert kept("trimmed") < 8  # and what is left once trimmed
