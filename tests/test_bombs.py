"""Decompression bombs against every route that takes an image, in every dialect: each is a
400 that names the field and says what the limit is, and the API process's peak memory stays
bounded (its pixels would take 900 MB; a decoded bomb would show).

The server is conftest's API-only ``api_server`` (no worker, so no torch), whose memory is the
request handling's alone. Its peak resident size (``VmHWM``) is reset before the bombs and
read after them."""

from __future__ import annotations

import base64
import http.server
import threading
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image

from helpers import png_bytes

pytestmark = pytest.mark.slow  # its own server: not for make test-fast

SIDE = 30_000  # 900 million greyscale pixels: 900 MB decoded
BOUND = 250 * 2**20  # what handling all the bombs may add to the resident size


def _bomb() -> bytes:
    """A valid PNG of SIDE×SIDE black pixels, about 4 MB compressed."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = SIDE.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    row = b"\0" * (SIDE + 1)  # filter byte + pixels
    packer = zlib.compressobj(1)
    pixels = b"".join([packer.compress(row) for _ in range(SIDE)] + [packer.flush()])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


BOMB = _bomb()
B64 = base64.b64encode(BOMB).decode()
FINE = png_bytes(Image.new("RGB", (64, 64), "teal"))
FINE64 = base64.b64encode(FINE).decode()


class _Bombs(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(BOMB)))
        self.end_headers()
        self.wfile.write(BOMB)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def bomb_url():
    host = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Bombs)  # allow-listed
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{host.server_address[1]}/bomb.png"
    host.shutdown()


def _memory(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


def _multipart(**files: bytes) -> dict:
    return {name: (f"{name}.png", data, "image/png") for name, data in files.items()}


NOVITA = {"model_name": "demo", "prompt": "p", "image_base64": FINE64}
CONTROLNET = {"args": [{"image": B64, "module": "none", "model": "demo-controlnet"}]}
PNG = {"content-type": "image/png"}

# Each: a name, the path, how the bomb is sent, and the field the error must name.
ROUTES = [
    ("native upload", "/huabu/v1/uploads", dict(content=BOMB, headers=PNG), "file"),
    ("native multipart", "/huabu/v1/uploads", dict(files=_multipart(file=BOMB)), "file"),
    ("novita img2img", "/v3/async/img2img",
     dict(json={"request": NOVITA | {"image_base64": B64}}), "image_base64"),
    ("novita controlnet", "/v3/async/img2img",
     dict(json={"request": NOVITA | {"controlnet": {"units": [
         {"model_name": "demo-controlnet", "image_base64": B64}]}}}),
     "controlnet.units.0.image_base64"),
    ("novita ip-adapter", "/v3/async/img2img",
     dict(json={"request": NOVITA | {"ip_adapters": [
         {"model_name": "demo-ip-adapter", "image_base64": B64}]}}),
     "ip_adapters.0.image_base64"),
    ("kamiya image2image", "/api/image/generate",
     dict(json={"type": "image2image", "prompts": "p", "image": B64}), "image"),
    ("v1b task_submit URL", "/api/v1b/task_submit", "url:init_img", "init_img"),
    ("v1b dataset URL", "/api/v1b/dataset", "url:images", "images.0"),
    ("v1b upload_imgs", "/api/v1b/upload_imgs",
     dict(files=[("init_img", ("a.png", BOMB, "image/png"))]), "init_img"),
    ("a1111 img2img", "/sdapi/v1/img2img",
     dict(json={"prompt": "p", "init_images": [B64]}), "init_images.0"),
    ("a1111 mask", "/sdapi/v1/img2img",
     dict(json={"prompt": "p", "init_images": [FINE64], "mask": B64}), "mask"),
    ("a1111 controlnet", "/sdapi/v1/txt2img",
     dict(json={"prompt": "p", "alwayson_scripts": {"controlnet": CONTROLNET}}),
     "alwayson_scripts.controlnet.args.0.image"),
    ("a1111 png-info", "/sdapi/v1/png-info", dict(json={"image": B64}), "image"),
    ("sd api server img2img", "/img2img",
     dict(json={"prompt": "p", "init_image": B64}), "init_image"),
    ("openai edits", "/v1/images/edits",
     dict(data={"prompt": "p"}, files=_multipart(image=BOMB)), "image"),
    ("openai edits mask", "/v1/images/edits",
     dict(data={"prompt": "p"}, files=_multipart(image=FINE, mask=BOMB)), "mask"),
    ("openai variations", "/v1/images/variations", dict(files=_multipart(image=BOMB)), "image"),
]  # fmt: skip


def test_every_image_route_refuses_a_bomb_in_bounded_memory(api_server, bomb_url):
    pid = api_server.process.pid
    client = httpx.Client(
        base_url=api_server.url, headers={"Authorization": f"Bearer {api_server.key}"}, timeout=120
    )
    client.get("/huabu/v1/me")  # warm: imports and connections made before measuring
    before = _memory(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to now
    for name, path, how, field in ROUTES:
        if isinstance(how, str):  # a JSON body that points at the bomb by URL
            key = how.removeprefix("url:")
            value = bomb_url if key == "init_img" else [bomb_url]
            body = {"model_name": "demo", "prompt": "p", "name": "bombs", key: value}
            response = client.post(path, json=body)
        else:
            response = client.post(path, **how)
        assert response.status_code == 400, f"{name}: {response.status_code} {response.text}"
        assert field in response.text and "the limit is" in response.text, (
            f"{name}: {response.text}"
        )
    peak = _memory(pid, "VmHWM")
    print(f"API process: {before / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB")
    assert peak - before < BOUND, f"peak {peak / 2**20:.0f} MiB, from {before / 2**20:.0f} MiB"
