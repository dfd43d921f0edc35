"""Real huabu processes for end-to-end tests: `huabu serve` and `huabu worker` as separate
processes on a free port, talking to the embedded PostgreSQL of a shared HUABU_HOME. They are
forked from the session's zygote (``zygote.py``: imported once, so that each start does not
spend seconds importing torch), but for API-only servers, which import no torch and must be
seen not to; ``HUABU_TEST_ZYGOTE=0`` starts each as a fresh interpreter instead."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from zygote import ForkedProcess, Zygote

HUABU = [sys.executable, "-m", "huabu"]
#: Fast failure detection for tests: heartbeat every 0.5 s, a worker silent 3 s is dead.
FAST = {"HUABU_HEARTBEAT_SECONDS": "0.5", "HUABU_STALLED_SECONDS": "3", "HUABU_THREADS": "1"}
#: Every huabu process's log this session: none may hold a traceback (see conftest).
LOGS: list[Path] = []
TRACEBACK = "Traceback (most recent call last)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_ZYGOTE: Zygote | None = None
_FALSE = ("false", "0", "no", "off", "f", "n")


def zygote() -> Zygote | None:
    """The session's zygote (None with HUABU_TEST_ZYGOTE=0)."""
    global _ZYGOTE
    if os.environ.get("HUABU_TEST_ZYGOTE", "1") == "0":
        return None
    if _ZYGOTE is None:
        _ZYGOTE = Zygote(Path(tempfile.mkdtemp(prefix="huabu-zygote-")))
    return _ZYGOTE


def close_zygote() -> None:
    if _ZYGOTE is not None:
        _ZYGOTE.close()


def run_huabu(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """``huabu <args>`` run to its end, as ``subprocess.run(..., capture_output=True,
    text=True)`` runs it (forked from the zygote where there is one)."""
    forks = zygote()
    if forks is None:
        return subprocess.run(
            [*HUABU, *args], capture_output=True, text=True, env=env, timeout=timeout
        )
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder) / "out", Path(folder) / "err"
        child = forks.spawn(args, env, out, err)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            raise
        read = lambda path: path.read_text() if path.exists() else ""  # noqa: E731
        return subprocess.CompletedProcess(args, code, read(out), read(err))


class Process:
    """A huabu process whose output goes to a log file (read it when a test fails)."""

    def __init__(self, args: list[str], home: Path, env: dict[str, str], log: Path) -> None:
        self.home = home
        self.log = log
        LOGS.append(log)
        self.handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        full_env = os.environ | {"HUABU_HOME": str(home)} | FAST | env
        # (An API-only server imports no torch: forked from the zygote it would hold it, and
        # it starts in a second anyway.)
        api_only = args[0] == "serve" and full_env.get("HUABU_WORKER", "").lower() in _FALSE
        forks = None if api_only else zygote()
        if forks is not None:
            self.process: subprocess.Popen | ForkedProcess = forks.spawn(args, full_env, log)
        else:
            self.process = subprocess.Popen(
                [*HUABU, *args], env=full_env, stdout=self.handle, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, like a crash or the OOM killer."""
        self.process.kill()
        self.process.wait(10)
        self.handle.close()

    def stop(self, timeout: float = 60) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.handle.close()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Server(Process):
    def __init__(self, home: Path, env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            ["serve"],
            home,
            {"HUABU_PORT": str(self.port)} | (env or {}),
            log or home / f"serve-{self.port}.log",
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"huabu serve exited:\n{self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/huabu/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"huabu serve did not come up:\n{self.output()[-3000:]}")

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


class Worker(Process):
    def __init__(self, home: Path, env: dict[str, str] | None = None):
        super().__init__(["worker"], home, env or {}, home / f"worker-{time.monotonic_ns()}.log")


def stop_embedded_postgres(home: Path) -> None:
    """Stop the embedded server a test home started: this process lets go of it (stopping it
    if it is the last user), and whatever a SIGKILLed process left running is stopped too."""
    from huabu.db.server import release
    from huabu.settings import Settings

    release(Settings(home=home))
    pid_file = home / "postgres" / "postmaster.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)  # fast shutdown
