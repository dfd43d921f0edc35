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
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import httpx

from huabu.errors import InvalidRequest
from huabu.settings import Settings

MAX_REDIRECTS = 5


#: The 6to4 relay anycast prefix: deprecated (RFC 7526), and a way around the filter.
_RELAY_6TO4 = ipaddress.ip_network("192.88.99.0/24")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_6TO4 = ipaddress.ip_network("2002::/16")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _meanings(address: Address) -> list[Address]:
    """The address and every IPv4 address it stands for: IPv4-mapped, NAT64, 6to4 and
    IPv4-compatible IPv6 forms reach the IPv4 address they embed."""
    meanings: list[Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        value = int(address)
        if address.ipv4_mapped is not None:
            meanings.append(address.ipv4_mapped)
        if address in _NAT64 or address in _NAT64_LOCAL or address in _IPV4_COMPATIBLE:
            meanings.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
        if address in _6TO4:
            meanings.append(ipaddress.IPv4Address((value >> 80) & 0xFFFFFFFF))
    return meanings


def _public(address: Address) -> bool:
    """Global unicast only: not private, loopback, link-local, reserved, multicast or any other
    special-purpose range (IANA's registries, as Python's ``is_global`` knows them)."""
    return address.is_global and not address.is_multicast and address not in _RELAY_6TO4


def allowed(address: Address, allow: list[str]) -> bool:
    """Whether huabu may connect to ``address``: every meaning of it public, or the address in
    one of the ``HUABU_FETCH_ALLOW`` networks."""
    if any(address in ipaddress.ip_network(network, strict=False) for network in allow):
        return True
    return all(_public(meaning) for meaning in _meanings(address))


def _resolve(host: str, port: int, field: str, settings: Settings) -> str:
    """One checked address for ``host``: every address it resolves to must be allowed. The
    messages never say what a name resolves to (that would make this a DNS lookup tool)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):  # gaierror; IDNA errors for malformed names
        raise InvalidRequest(f"{field}: cannot resolve the URL's host", param=field) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses or not all(allowed(a, settings.fetch_allow) for a in addresses):
        raise InvalidRequest(
            f"{field}: the URL's host is not a public address; this server does not fetch from "
            "private, local or special-purpose networks",
            param=field,
        )
    return str(addresses[0])


def _parts(url: str, field: str) -> tuple[SplitResult, str, int]:
    """The URL's parts, host and port, or InvalidRequest for anything malformed."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port, a bad IPv6 literal, …
        raise InvalidRequest(f"{field}: not a valid URL", param=field) from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(f"{field}: only http and https URLs can be fetched", param=field)
    return parts, host, port or (443 if parts.scheme == "https" else 80)


def _pinned(url: str, field: str, settings: Settings) -> tuple[str, str, dict[str, str]]:
    """``url`` checked: the URL of the address it was checked at, its host name (for TLS), and
    the headers that name the host it asked for."""
    parts, hostname, port = _parts(url, field)
    address = _resolve(hostname, port, field, settings)
    host = f"[{address}]" if ":" in address else address
    pinned = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
    return pinned, hostname, {"Host": parts.netloc.rsplit("@", 1)[-1], "User-Agent": "huabu"}


def fetch(url: str, *, field: str, settings: Settings) -> bytes:
    """The body at ``url`` (at most HUABU_FETCH_MAX_BYTES), or InvalidRequest naming ``field``."""
    deadline = time.monotonic() + settings.fetch_timeout
    for _ in range(MAX_REDIRECTS + 1):
        pinned, hostname, headers = _pinned(url, field, settings)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            # trust_env=False: no proxy from the environment may take the checked connection.
            with (
                httpx.Client(timeout=left, follow_redirects=False, trust_env=False) as client,
                client.stream(
                    "GET", pinned, headers=headers, extensions={"sni_hostname": hostname}
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
        except httpx.TimeoutException:
            raise InvalidRequest(f"{field}: fetching the URL timed out", param=field) from None
        except httpx.HTTPError:
            raise InvalidRequest(
                f"{field}: could not fetch the URL (no connection, or not a valid HTTP answer)",
                param=field,
            ) from None
    raise InvalidRequest(
        f"{field}: fetching the URL took too long or redirected too often", param=field
    )


def check_url(url: str, *, field: str, settings: Settings) -> str:
    """``url`` if it is an http(s) URL of a public (or allowed) host, else InvalidRequest
    naming ``field``: for URLs huabu will call later (webhooks). Checked again when called."""
    if len(url) > 2048:
        raise InvalidRequest(f"{field}: URLs are limited to 2048 characters", param=field)
    _, host, port = _parts(url, field)
    _resolve(host, port, field, settings)
    return url


def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    field: str,
    timeout: float,
    settings: Settings,
) -> int:
    """POST ``body`` to ``url`` over a connection pinned to its checked address (no
    redirects followed; at most 64 KiB of the answer read, and dropped). Returns the status;
    raises InvalidRequest naming ``field`` for a refused host, a timeout or no answer."""
    pinned, hostname, own = _pinned(url, field, settings)
    headers = own | headers
    deadline = time.monotonic() + timeout
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST", pinned, content=body, headers=headers, extensions={"sni_hostname": hostname}
            ) as response,
        ):
            read = 0
            for chunk in response.iter_bytes():
                read += len(chunk)
                if read > 65536 or time.monotonic() > deadline:
                    break
            return response.status_code
    except httpx.TimeoutException:
        raise InvalidRequest(f"{field}: no answer within {timeout:g} s", param=field) from None
    except httpx.HTTPError:
        raise InvalidRequest(
            f"{field}: could not connect (or not a valid HTTP answer)", param=field
        ) from None
