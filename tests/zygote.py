"""Real huabu processes without paying their imports each time.

Every ``huabu serve`` and ``huabu worker`` an end-to-end test starts spends seconds importing
torch, diffusers and transformers before it does anything. The zygote is one process that
imports them once and then forks a child for each process a test asks for: the child is a
real, separate ``huabu`` process (its own pid, environment, working directory, log file and
signals; killed, stopped and restarted like any other), only already imported. The zygote
itself runs no torch code (a fork after it had would inherit thread pools it could not use),
and reaps its children, keeping their exit codes for the tests.

Run as ``python tests/zygote.py SOCKET``; ``Zygote.spawn`` is the tests' side.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any


def _child(request: dict[str, Any]) -> None:
    """In the forked child: become ``huabu <args>`` with the request's environment and log."""
    code = 1
    try:
        for fd, name in ((1, "log"), (2, "errors" if request.get("errors") else "log")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), fd)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(number, signal.SIG_DFL)
        sys.argv = ["huabu", *request["args"]]
        from huabu.cli import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the child's log, as a process would
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(path: str) -> None:
    """Import what huabu's processes import, then fork one child per request."""
    import uvicorn  # noqa: F401

    import huabu.app  # noqa: F401
    import huabu.cli  # noqa: F401
    import huabu.engine.engine  # noqa: F401
    import huabu.web.protocol  # noqa: F401
    import huabu.worker.process  # noqa: F401

    codes: dict[int, int] = {}
    changed = threading.Condition()

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                time.sleep(0.05)
                continue
            with changed:
                codes[pid] = os.waitstatus_to_exitcode(status)
                changed.notify_all()

    threading.Thread(target=reap, daemon=True).start()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    while True:
        connection, _ = listener.accept()
        with connection, connection.makefile("rw") as stream:
            request = json.loads(stream.readline())
            if request["op"] == "spawn":
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    _child(request)
                answer: dict[str, Any] = {"pid": pid}
            else:  # "wait": the exit code within the timeout, else null
                deadline = time.monotonic() + request["timeout"]
                with changed:
                    while request["pid"] not in codes and time.monotonic() < deadline:
                        changed.wait(max(0.0, deadline - time.monotonic()))
                    answer = {"code": codes.get(request["pid"])}
            stream.write(json.dumps(answer) + "\n")
            stream.flush()


class Zygote:
    """The tests' side: one zygote per test session, started on first use."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "zygote.sock")
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.folder = folder

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.process is None:
                self._start()
            with socket.socket(socket.AF_UNIX) as connection:
                connection.connect(self.path)
                with connection.makefile("rw") as stream:
                    stream.write(json.dumps(request) + "\n")
                    stream.flush()
                    return json.loads(stream.readline())

    def _start(self) -> None:
        log = open(self.folder / "zygote.log", "ab")  # noqa: SIM115 - lives with the zygote
        self.process = subprocess.Popen(
            [sys.executable, __file__, self.path], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test zygote did not start (see zygote.log)")
            time.sleep(0.05)

    def spawn(
        self, args: list[str], env: dict[str, str], log: Path, errors: Path | None = None
    ) -> ForkedProcess:
        """``huabu <args>``, its output appended to ``log`` (its errors to ``errors``, if
        given)."""
        request = {"op": "spawn", "args": args, "env": env, "log": str(log), "cwd": os.getcwd(),
                   "errors": str(errors) if errors else None}  # fmt: skip
        return ForkedProcess(self, self._ask(request)["pid"])

    def exit_code(self, pid: int, timeout: float) -> int | None:
        return self._ask({"op": "wait", "pid": pid, "timeout": timeout})["code"]

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)


class ForkedProcess:
    """A zygote's child as ``subprocess.Popen`` is used by ``serving.Process``."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.zygote.exit_code(self.pid, 0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.zygote.exit_code(self.pid, 3600 if timeout is None else timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(["huabu"], timeout or 0)
        return self.returncode

    def send_signal(self, number: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


if __name__ == "__main__":
    serve(sys.argv[1])
