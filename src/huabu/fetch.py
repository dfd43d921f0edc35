"""The one way huabu fetches a URL a client handed it (an ``init_img``, a ControlNet image).

A URL from a client is an attack on the network the server sits in (SSRF): it may point at
loopback, the cloud metadata service (169.254.169.254), or private hosts, directly, by a DNS
name that resolves there, or by a redirect. So: http(s) only; every address the host resolves
to must be public (or in ``HUABU_FETCH_ALLOW``); the connection goes to the address that was
checked (no second DNS lookup to rebind); redirects are followed by hand, each hop checked
again; size and time are capped. URLs of huabu's own ``/files`` are read from storage.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

from huabu.errors import InvalidRequest
from huabu.settings import Settings

MAX_REDIRECTS = 5


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow: list[str]) -> bool:
    if address.is_global:
        return True
    return any(address in ipaddress.ip_network(network, strict=False) for network in allow)


def _resolve(host: str, port: int, field: str, settings: Settings) -> str:
    """One checked address for ``host``: every address it resolves to must be allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidRequest(f"{field}: cannot resolve host {host!r}", param=field) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    for address in addresses:
        if not _allowed(address, settings.fetch_allow):
            raise InvalidRequest(
                f"{field}: {host} resolves to {address}, a non-public address this server will "
                "not fetch from",
                param=field,
            )
    return str(addresses[0])


def fetch(url: str, *, field: str, settings: Settings) -> bytes:
    """The body at ``url`` (at most HUABU_FETCH_MAX_BYTES), or InvalidRequest naming ``field``."""
    deadline = time.monotonic() + settings.fetch_timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"{field}: only http and https URLs can be fetched", param=field)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = _resolve(parts.hostname, port, field, settings)
        host = f"[{address}]" if ":" in address else address
        pinned = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
        headers = {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "huabu"}
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            # trust_env=False: no proxy from the environment may take the checked connection.
            with (
                httpx.Client(timeout=left, follow_redirects=False, trust_env=False) as client,
                client.stream(
                    "GET", pinned, headers=headers, extensions={"sni_hostname": parts.hostname}
                ) as response,
            ):
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise InvalidRequest(
                        f"{field}: fetching the URL gave HTTP {response.status_code}", param=field
                    )
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > settings.fetch_max_bytes:
                        raise InvalidRequest(
                            f"{field}: the URL's content is over {settings.fetch_max_bytes} bytes",
                            param=field,
                        )
                    if time.monotonic() > deadline:
                        break
                else:
                    return bytes(body)
        except httpx.HTTPError as exc:
            raise InvalidRequest(
                f"{field}: could not fetch the URL ({type(exc).__name__})", param=field
            ) from None
    raise InvalidRequest(
        f"{field}: fetching the URL took too long or redirected too often", param=field
    )
