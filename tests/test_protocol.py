"""HTTP itself, through a real `huabu serve`: the request head is capped, a 405 names every
method the path serves, and the OpenAPI document describes what each dialect sends and gets."""

from __future__ import annotations

import socket

import httpx
import pytest


def _raw(server, head: bytes, *, pieces: int = 1) -> bytes:
    """Send ``head`` (in ``pieces`` writes) on a fresh connection; the server's answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        step = -(-len(head) // pieces)
        try:
            for start in range(0, len(head), step):
                sock.sendall(head[start : start + step])
        except OSError:  # the server answered and closed while the rest was on its way
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
        return answer


def test_a_huge_header_is_a_431_and_the_server_goes_on(server):
    # One 16 MiB header, sent in 1 MiB writes: refused once the head passes 64 KiB.
    head = b"GET /huabu/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**24 + b"\r\n\r\n"
    answer = _raw(server, head, pieces=16)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"over 65536 bytes" in answer
    # Many headers that are each small but together too large, in one write.
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(1000))
    answer = _raw(server, b"GET /huabu/v1/health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert httpx.get(server.url + "/huabu/v1/health").status_code == 200


def test_headers_a_browser_sends_are_fine(server):
    cookie = "session=" + "c" * 8000  # a large but ordinary cookie
    response = httpx.get(server.url + "/huabu/v1/health", headers={"Cookie": cookie})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "path, allowed",
    [
        ("/api/image/generate", "GET, POST"),
        ("/sdapi/v1/options", "GET, POST"),
        ("/huabu/v1/generations", "POST"),
    ],
)
def test_a_405_names_every_method_of_the_path(server, path, allowed):
    response = httpx.request("PUT", server.url + path)
    assert response.status_code == 405
    assert response.headers["allow"] == allowed


def test_the_openapi_document_describes_the_dialects(server):
    document = httpx.get(server.url + "/openapi.json").json()
    paths = document["paths"]
    # Dialect bodies read by hand are described, under the media types the route reads.
    novita = paths["/v3/async/txt2img"]["post"]
    request = novita["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["request"]
    assert "model_name" in request["properties"]["request"]["properties"]
    edits = paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert edits["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert (
        "application/x-www-form-urlencoded" in paths["/txt2img"]["post"]["requestBody"]["content"]
    )
    # Their answers too, and each error in the dialect's own shape.
    result = paths["/v3/async/task-result"]["get"]["responses"]
    assert "task" in result["200"]["content"]["application/json"]["schema"]["properties"]
    novita_error = result["400"]["content"]["application/json"]["schema"]
    assert set(novita_error["required"]) >= {"code", "reason", "message"}
    openai_error = paths["/v1/images/generations"]["post"]["responses"]["400"]
    assert "error" in openai_error["content"]["application/json"]["schema"]["properties"]
    # The statuses each kind of route can answer.
    a1111 = paths["/sdapi/v1/txt2img"]["post"]["responses"]
    assert {"200", "400", "401", "413", "429", "500", "504"} <= set(a1111)
    assert "504" not in paths["/v3/async/txt2img"]["post"]["responses"]
    # Each dialect has its own tag.
    tags = {op["tags"][0] for ops in paths.values() for op in ops.values()}
    assert len(tags) >= 7
