"""Service benchmark: what HTTP, the queue and storage add, and how much load the API takes.

    .venv/bin/python bench/service.py [--runs 7] [--submits 1000] [--poll-seconds 5]
                                      [--against REV]

(1) End-to-end task time over HTTP (submit → long poll until succeeded → download the image)
    ÷ the engine's own time for the same request, 20 steps, at 64×64 (target ≤ 1.05) and
    256×256. The server
    (`huabu serve`, worker inside) and the in-process engine run alternately, never together.
    With ``--against REV`` (a commit, e.g. the previous release), a `huabu serve` of that
    revision (a git worktree of it, on its own database) runs in the same rounds, and its
    ratio is printed beside this one's (one server at a time, each alternating with the
    engine).
(2) N submits to an API-only server (HUABU_WORKER=false) with an API key, first all N at
    once (N connections), then from 8 clients in a loop: p50/p99 submit latency (target p99
    < 50 ms) and throughput; then polls per second of GET /tasks/{id} from 8 and 64
    concurrent clients (target ≥ 1000/s). Client, server and PostgreSQL share the machine.
Uses the demo model under a temporary HUABU_HOME; prints numbers, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from huabu import demos
from huabu.auth import Accounts  # noqa: E402
from huabu.db.session import open_database  # noqa: E402
from huabu.engine import quiet_libraries  # noqa: E402
from huabu.engine.engine import Engine  # noqa: E402
from huabu.native import GenerationRequest  # noqa: E402
from huabu.settings import Settings  # noqa: E402
from serving import Server, stop_embedded_postgres  # noqa: E402

REQUEST = {"model": "demo", "prompt": "a red fox in the snow", "width": 64, "height": 64,
           "steps": 20, "seed": 42, "sampler": "Euler a"}  # fmt: skip


def end_to_end_ratio(home: Path, runs: int, size: int, against: Path | None) -> None:
    settings = Settings(home=home, threads=2)
    engine = Engine(settings)
    body = REQUEST | {"width": size, "height": size}
    request = GenerationRequest(**body)
    env = {"HUABU_THREADS": "2", "HUABU_ANONYMOUS": "true"}
    homes = {"this": (home, env)}
    if against is not None:  # the other revision on a database of its own, the same models
        other = home.parent / f"{home.name}-against"
        other.mkdir(exist_ok=True)
        if not (other / "models").exists():
            (other / "models").symlink_to(home / "models")
        homes["previous"] = (other, env | {"PYTHONPATH": str(against / "src")})

    def over_http(server: Server) -> None:
        client = server.client()
        task = client.post("/huabu/v1/generations", json=body).json()
        task = client.get(f"/huabu/v1/tasks/{task['id']}", params={"wait": 60}).json()
        assert task["state"] == "succeeded", task
        client.get(task["images"][0]["url"]).raise_for_status()

    line = f"(1) {size}x{size}, 20 steps, median of {runs}:"
    engine.generate(request)  # warm-up: load, first-task costs
    # One server at a time, alternating with the engine: each ratio is measured against the
    # engine's own time in the same minutes, with nothing else up.
    for name, (server_home, server_env) in homes.items():
        server = Server(server_home, server_env)
        try:
            over_http(server), over_http(server)
            local, remote = [], []
            for _ in range(runs):
                for over, samples in ((False, local), (True, remote)):
                    time.sleep(0.5)  # let the other process's torch threads stop spinning
                    start = time.perf_counter()
                    over_http(server) if over else engine.generate(request)
                    samples.append(time.perf_counter() - start)
        finally:
            server.stop()
        e, h = statistics.median(local), statistics.median(remote)
        line += (
            f" {name}: engine {e * 1000:.0f} ms, over HTTP {h * 1000:.0f} ms, ratio {h / e:.3f};"
        )
    print(line + "  (target <= 1.05)")


@contextlib.contextmanager
def worktree(revision: str | None) -> Iterator[Path | None]:
    """A checkout of ``revision`` in a temporary folder (None: none)."""
    if revision is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rev"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(path), revision], check=True
        )
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], check=False)


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost far less CPU than
    the server it measures (httpx costs about as much per request as huabu does)."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


async def load(home: Path, submits: int, poll_seconds: float) -> None:
    accounts = Accounts(open_database(Settings(home=home)))
    key = accounts.create_key(accounts.add_user("bench@example.com", "password123").id)
    server = Server(
        home,
        {
            "HUABU_WORKER": "false",
            "HUABU_MAX_QUEUED_PER_USER": str(submits * 4),
            "HUABU_MAX_QUEUED": str(submits * 8),
        },
    )
    headers = {"Authorization": f"Bearer {key}"}
    body = json.dumps(REQUEST).encode()
    try:

        async def connections(n: int) -> list[Connection]:
            return list(
                await asyncio.gather(
                    *(Connection("127.0.0.1", server.port, headers).open() for _ in range(n))
                )
            )

        async def submit(connection: Connection) -> tuple[float, str]:
            start = time.perf_counter()
            status, reply = await connection.request("POST", "/huabu/v1/generations", body)
            assert status == 202, reply
            return time.perf_counter() - start, json.loads(reply)["id"]

        ids: list[str] = []
        for clients in (submits, 8):
            pool = await connections(clients)
            await pool[0].request("GET", "/huabu/v1/me")  # the key is now in the server's cache
            per_client = submits // clients
            started = time.perf_counter()

            async def client(
                connection: Connection, n: int = per_client
            ) -> list[tuple[float, str]]:
                return [await submit(connection) for _ in range(n)]

            results = [r for batch in await asyncio.gather(*map(client, pool)) for r in batch]
            wall = time.perf_counter() - started
            for connection in pool:
                connection.close()
            ids += [task_id for _, task_id in results]
            latencies = sorted(seconds for seconds, _ in results)
            print(
                f"(2) {len(results)} submits from {clients} concurrent clients: "
                f"p50 {percentile(latencies, 0.5) * 1000:.0f} ms, "
                f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms (target < 50 ms); "
                f"{len(results) / wall:.0f} submits/s"
            )

        for clients in (8, 64):
            pool = await connections(clients)
            count = 0
            deadline = time.perf_counter() + poll_seconds

            async def poller(index: int, connection: Connection, until: float = deadline) -> None:
                nonlocal count
                while time.perf_counter() < until:
                    task_id = ids[(index * 7919 + count) % len(ids)]
                    status, reply = await connection.request("GET", f"/huabu/v1/tasks/{task_id}")
                    assert status == 200, reply
                    count += 1

            start = time.perf_counter()
            await asyncio.gather(*(poller(i, c) for i, c in enumerate(pool)))
            rate = count / (time.perf_counter() - start)
            for connection in pool:
                connection.close()
            print(
                f"    polls of queued tasks: {rate:.0f}/s from {clients} concurrent clients "
                f"(target >= 1000/s)"
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--poll-seconds", type=float, default=5.0)
    parser.add_argument("--sizes", default="64,256", help="sizes for (1), comma-separated")
    parser.add_argument("--against", help="a revision to measure (1) beside, e.g. a release")
    args = parser.parse_args()
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp, worktree(args.against) as against:
        for name in ("e2e", "load"):
            (Path(tmp) / name).mkdir()
        demos.build(Settings(home=Path(tmp) / "e2e"))
        (Path(tmp) / "load" / "models").symlink_to(Path(tmp) / "e2e" / "models")
        try:
            for size in map(int, args.sizes.split(",")):
                end_to_end_ratio(Path(tmp) / "e2e", args.runs, size, against)
            asyncio.run(load(Path(tmp) / "load", args.submits, args.poll_seconds))
        finally:
            for name in ("e2e", "e2e-against", "load"):
                if (Path(tmp) / name).exists():
                    stop_embedded_postgres(Path(tmp) / name)


if __name__ == "__main__":
    main()
