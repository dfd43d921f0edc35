"""Abuse benchmark: what one hostile client costs everyone else, beside a quiet baseline.

    .venv/bin/python bench/abuse.py                 # each attack alone, ~2 minutes
    .venv/bin/python bench/abuse.py --soak 20       # + a 20-minute soak, memory every 30 s
    .venv/bin/python bench/abuse.py --split         # API-only server beside its own worker

(1) A `huabu serve` with a worker inside (the demo model, `make run`'s shape). For a quiet
    baseline and then for each of the probe's worst inputs, sent in a loop by one client for
    ``--seconds``: /health latency (median, p99, max, from a second client every 20 ms) and
    the server's resident memory (now and peak). First a plain flood of cheap requests (what
    request rate alone costs the others), then the attacks: a 1 MB PNG parameters text to
    png-info; JSON nested 100,000 deep; 2 million items in one body; 50 MB bodies without
    credentials; wrong passwords as fast as they are answered; 300 half-sent request heads;
    16 PNGs of 4096² zeros in one v1b upload; 20 ControlNet units of 4096² in one A1111
    request; a prompt of 1,600 unclosed ``<lora:`` tags.
(2) ``--soak N``: N minutes of mixed traffic from three users (native, A1111, novita, OpenAI,
    v1b: generations at 64², polls, listings) with the attacks above among them; the
    server's resident memory every 30 s, and how fast it still rose in the last third (under
    0.5 MB a minute: a plateau).
Prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import itertools
import socket
import statistics
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
from PIL import Image, PngImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from huabu import demos
from huabu.auth import Accounts  # noqa: E402
from huabu.db.session import open_database  # noqa: E402
from huabu.engine import quiet_libraries  # noqa: E402
from huabu.settings import Settings  # noqa: E402
from serving import Server, Worker, stop_embedded_postgres  # noqa: E402


def _png_with_text(size: int) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "prompt\n" + "a" * size)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def _zeros_png(side: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    pixels = zlib.compress(b"\0" * ((side + 1) * side), 9)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _memory(pid: int) -> tuple[int, int]:
    """Resident and peak resident memory of ``pid``, bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found["VmRSS"], found["VmHWM"]


class Attacks:
    """Each of the probe's worst inputs as one step of a loop."""

    def __init__(self, url: str, port: int, key: str) -> None:
        self.url, self.port, self.key = url, port, key
        self.auth = {"Authorization": f"Bearer {key}"}
        self.info_png = _png_with_text(2**20)
        self.zeros = _zeros_png(4096)
        self.zeros64 = base64.b64encode(self.zeros).decode()

    def flood(self, client: httpx.Client) -> None:
        """Not an attack on a weakness: the cheapest authenticated request, back to back, for
        the cost of request rate alone."""
        client.get("/huabu/v1/me", headers=self.auth)

    def png_info(self, client: httpx.Client) -> None:
        client.post("/sdapi/v1/png-info", json={"image": self.info_png}, headers=self.auth)

    def deep_json(self, client: httpx.Client) -> None:
        deep = b"[" * 100_000 + b"]" * 100_000
        client.post("/sdapi/v1/txt2img", content=deep, headers=self.auth)

    def many_items(self, client: httpx.Client) -> None:
        body = b'{"a": [' + b"1," * 2_000_000 + b"1]}"
        client.post("/sdapi/v1/options", content=body, headers=self.auth)

    def big_body_no_key(self, client: httpx.Client) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v3/async/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                b"application/json\r\nContent-Length: 52428800\r\n\r\n" + b" " * 2**20
            )
            sock.recv(4096)

    def wrong_passwords(self, client: httpx.Client) -> None:
        client.post("/huabu/v1/sessions", json={"email": "bench@example.com", "password": "no"})

    def half_heads(self, client: httpx.Client) -> None:
        sockets = []
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            sock.sendall(b"GET /huabu/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            sockets.append(sock)
        time.sleep(1)
        for sock in sockets:
            sock.close()

    def upload_zeros(self, client: httpx.Client) -> None:
        files = [("init_img", (f"{i}.png", self.zeros, "image/png")) for i in range(16)]
        client.post("/api/v1b/upload_imgs", files=files, data={"token": self.key})

    def controlnet_units(self, client: httpx.Client) -> None:
        units = [{"image": self.zeros64, "model": "demo-controlnet"}] * 20
        body = {"prompt": "p", "alwayson_scripts": {"controlnet": {"args": units}}}
        client.post("/sdapi/v1/txt2img", json=body, headers=self.auth)

    def lora_tags(self, client: httpx.Client) -> None:
        body = {"prompt": "<lora:a:b:" * 1600, "steps": 1}
        client.post("/sdapi/v1/txt2img", json=body, headers=self.auth)

    ALL = (
        "flood",
        "png_info",
        "deep_json",
        "many_items",
        "big_body_no_key",
        "wrong_passwords",
        "half_heads",
        "upload_zeros",
        "controlnet_units",
        "lora_tags",
    )


def _loop(step, url: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, OSError):
                step(client)


def _health(url: str, seconds: float) -> list[float]:
    latencies = []
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get("/huabu/v1/health")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    return latencies


def _row(name: str, latencies: list[float], memory: tuple[int, int], baseline: float) -> str:
    p99 = statistics.quantiles(latencies, n=100)[98]
    return (
        f"{name:18} {statistics.median(latencies) * 1e3:7.1f} {p99 * 1e3:8.1f} "
        f"{max(latencies) * 1e3:8.1f} {p99 / baseline:7.1f} "
        f"{memory[0] / 2**20:7.0f} {memory[1] / 2**20:7.0f}"
    )


def each_attack(server: Server, attacks: Attacks, seconds: float, names: list[str]) -> None:
    pid = server.process.pid
    print(f"\n(1) /health while one client attacks, {seconds:.0f} s each; memory of the server")
    print(
        f"{'attack':18} {'p50 ms':>7} {'p99 ms':>8} {'max ms':>8} {'p99 ×':>7} "
        f"{'RSS MB':>7} {'peak MB':>7}"
    )
    quiet = _health(server.url, seconds)
    baseline = statistics.quantiles(quiet, n=100)[98]
    print(_row("(quiet)", quiet, _memory(pid), baseline))
    for name in names:
        stop = threading.Event()
        attacker = threading.Thread(target=_loop, args=(getattr(attacks, name), server.url, stop))
        attacker.start()
        try:
            latencies = _health(server.url, seconds)
        finally:
            stop.set()
            attacker.join()
        print(_row(name, latencies, _memory(pid), baseline), flush=True)


def _user_traffic(url: str, key: str, stop: threading.Event, index: int) -> None:
    """One user's mixed dialect traffic: generations at 64², polls, listings."""
    headers = {"Authorization": f"Bearer {key}"}
    small = {"width": 64, "height": 64, "steps": 4}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        for turn in itertools.count():
            if stop.is_set():
                return
            try:
                kind = (turn + index) % 5
                if kind == 0:
                    task = client.post(
                        "/huabu/v1/generations", json={"model": "demo", "prompt": "a fox"} | small
                    ).json()
                    client.get(f"/huabu/v1/tasks/{task['id']}", params={"wait": 30})
                elif kind == 1:
                    client.post("/sdapi/v1/txt2img", json={"prompt": "a (cat:1.2)"} | small)
                elif kind == 2:
                    body = {
                        "request": {
                            "model_name": "demo.safetensors",
                            "prompt": "a dog",
                            "sampler_name": "Euler a",
                        }
                        | small
                    }
                    task = client.post("/v3/async/txt2img", json=body).json()
                    client.get("/v3/async/task-result", params={"task_id": task.get("task_id")})
                elif kind == 3:
                    body = {"model": "demo", "prompt": "a boat", "size": "64x64"}
                    client.post("/v1/images/generations", json=body)
                else:
                    client.get("/huabu/v1/tasks", params={"limit": 50})
                    client.get("/sdapi/v1/sd-models")
                    client.get("/v3/model")
            except (httpx.HTTPError, OSError, ValueError):
                pass


def soak(
    server: Server, attacks: Attacks, keys: list[str], minutes: float, worker: Worker | None
) -> None:
    pids = {"server": server.process.pid} | ({"worker": worker.process.pid} if worker else {})
    stop = threading.Event()
    threads = [
        threading.Thread(target=_user_traffic, args=(server.url, key, stop, i))
        for i, key in enumerate(keys)
    ]
    hostile = [getattr(attacks, name) for name in Attacks.ALL if name != "half_heads"]

    def attacker() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for step in itertools.cycle(hostile):
                if stop.is_set():
                    return
                with contextlib.suppress(httpx.HTTPError, OSError):
                    step(client)
                time.sleep(1)

    threads.append(threading.Thread(target=attacker))
    for thread in threads:
        thread.start()
    print(
        f"\n(2) soak: {minutes:.0f} min, 3 users of 5 dialects + one attacker; memory of "
        f"{' and '.join(pids)}"
    )
    samples: dict[str, list[int]] = {name: [] for name in pids}
    started = time.monotonic()
    try:
        while time.monotonic() - started < minutes * 60:
            time.sleep(30)
            line = f"  {(time.monotonic() - started) / 60:5.1f} min"
            for name, pid in pids.items():
                rss, peak = _memory(pid)
                samples[name].append(rss)
                line += f"  {name} RSS {rss / 2**20:6.0f} MB  peak {peak / 2**20:6.0f} MB"
            print(line, flush=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for name, rows in samples.items():
        last = rows[-max(2, len(rows) // 3) :]
        # Samples are 30 s apart: the last third's rise per minute, first to last sample.
        slope = (last[-1] - last[0]) / 2**20 / ((len(last) - 1) / 2)
        print(
            f"  {name}, last third: {last[0] / 2**20:.0f} -> {last[-1] / 2**20:.0f} MB, "
            f"{slope:+.1f} MB a minute "
            f"({'a plateau' if slope < 0.5 else 'still rising'})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="per attack in (1)")
    parser.add_argument("--soak", type=float, default=0.0, help="minutes of (2); 0: none")
    parser.add_argument("--only", default=",".join(Attacks.ALL), help="attacks of (1)")
    parser.add_argument(
        "--split", action="store_true", help="an API-only server beside a worker of its own"
    )
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        demos.build(Settings(home=home))
        accounts = Accounts(open_database(Settings(home=home)))
        users = [accounts.add_user(f"user{i}@example.com", "password123") for i in range(3)]
        keys = [accounts.create_key(user.id) for user in users]
        accounts.add_user("bench@example.com", "password123")
        env = {"HUABU_THREADS": "2", "HUABU_MAX_QUEUED_PER_USER": "1000"}
        server = Server(home, env | ({"HUABU_WORKER": "false"} if args.split else {}))
        worker = Worker(home, env) if args.split else None
        try:
            server.wait_ready()
            attacks = Attacks(server.url, server.port, keys[0])
            each_attack(server, attacks, args.seconds, [n for n in args.only.split(",") if n])
            if args.soak:
                soak(server, attacks, keys, args.soak, worker)
        finally:
            server.stop()
            if worker:
                worker.stop()
            stop_embedded_postgres(home)


if __name__ == "__main__":
    main()
