"""A watch over every response the suite's clients receive from huabu: no error body and no
task error may show a server path, a traceback or an exception class name.

``install`` wraps httpx and requests (every client the tests use: httpx directly and through
the openai SDK, requests through webuiapi and novita-client); ``leaks`` scans one text. The
suite fails at the end if any response leaked (see conftest)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

import httpx
import requests

#: Where the server's files are: no response of any kind may name them.
_PATHS = [
    r"site-packages",
    r"pytest-of-",  # every test server's HUABU_HOME is under /tmp/pytest-of-<user>/
    re.escape(str(Path(__file__).resolve().parents[1])),  # the source tree
    re.escape(sys.prefix),  # the virtual environment
]
#: What only the server's insides look like: no error may show them.
_INTERNALS = re.compile(
    "|".join(
        [
            r"Traceback \(most recent call last\)",
            r'File "[^"]+", line \d+',
            *_PATHS,
            # Python's exception class names (ValueError, OperationalError, KeyError, …).
            r"\b(?:[A-Z][a-z0-9]+)+(?:Error|Exception)\b",
        ]
    )
)
_PATH = re.compile("|".join(_PATHS))
#: The fields in which the dialects' task shapes carry a task's error.
_ERROR_FIELDS = {"error", "error_msg", "reason", "message", "detail", "errors", "msg"}
_TEXT_TYPES = ("application/json", "text/")


def leaks(text: str) -> list[str]:
    """The internals ``text`` (an error) shows, if any."""
    return [match.group(0) for match in _INTERNALS.finditer(text)]


def _errors_in(data: object) -> list[str]:
    """The strings under error-like keys anywhere in a JSON document."""
    if isinstance(data, dict):
        found = [v for k, v in data.items() if k in _ERROR_FIELDS and isinstance(v, str)]
        return found + [text for value in data.values() for text in _errors_in(value)]
    if isinstance(data, list):
        return [text for item in data for text in _errors_in(item)]
    return []


def response_leaks(status: int, body: str) -> list[str]:
    """Error bodies are scanned whole; other answers for server paths anywhere, and for the
    rest of the internals in their task errors (the fields ``_ERROR_FIELDS`` name)."""
    if status >= 400:
        return leaks(body)
    found = [match.group(0) for match in _PATH.finditer(body)]
    try:
        data = json.loads(body)
    except ValueError:
        return found
    return found + [leak for text in _errors_in(data) for leak in leaks(text)]


class Watch:
    def __init__(self) -> None:
        self.seen = 0
        self.findings: list[str] = []

    def check(self, method: str, url: str, status: int, content_type: str, body: str) -> None:
        if not url.startswith(("http://127.0.0.1", "http://localhost")):
            return
        if not content_type.startswith(_TEXT_TYPES):
            return
        self.seen += 1
        # What the caller itself sent and the answer names (a fuzzed task id of
        # "ValidationError" in "no task ValidationError") is an echo, not the server's insides.
        sent = unquote(url)
        found = [leak for leak in response_leaks(status, body) if leak not in sent]
        if found:
            self.findings.append(f"{method} {url} → {status}: {found[:3]} in {body[:300]!r}")


#: The session's one watch (conftest installs it and reports its findings).
WATCH = Watch()


def install(watch: Watch) -> None:
    """Wrap the send methods of httpx and requests for the rest of the session."""
    httpx_send = httpx.Client.send

    def send_httpx(self, request, *args, **kwargs):
        response = httpx_send(self, request, *args, **kwargs)
        if not kwargs.get("stream"):
            watch.check(
                request.method,
                str(request.url),
                response.status_code,
                response.headers.get("content-type", ""),
                response.text,
            )
        return response

    requests_send = requests.Session.send

    def send_requests(self, request, **kwargs):
        response = requests_send(self, request, **kwargs)
        if not kwargs.get("stream"):
            watch.check(
                request.method,
                request.url,
                response.status_code,
                response.headers.get("content-type", ""),
                response.text,
            )
        return response

    httpx.Client.send = send_httpx  # type: ignore[method-assign]
    requests.Session.send = send_requests  # type: ignore[method-assign]
