"""Schema-driven fuzzing of a real `huabu serve`: schemathesis sends every operation of the
OpenAPI document what the document allows, and what it does not, and checks what a client
would notice:

- no 5xx: nothing a client sends is a server error (the one 5xx allowed is the documented 504
  of a synchronous route, because this server has no worker and its tasks wait forever);
- every status, content type and body is one the document shows;
- no traceback in the server's log (conftest checks every huabu log of the session).

The server (conftest's ``api_server``) has its own database and no worker, so what the fuzzer
queues never runs. The suite
sends HUABU_FUZZ_EXAMPLES (default 6) examples per operation; ``make fuzz`` sends 200.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from huabu.app import create_app
from huabu.settings import Settings
from internals import WATCH

EXAMPLES = int(os.environ.get("HUABU_FUZZ_EXAMPLES", "6"))
#: ``all`` (what ``make fuzz`` sets): every check schemathesis has, its generic "not a server
#: error" replaced by ``no_server_error`` below, but one: ``positive_data_acceptance`` wants
#: every schema-valid request accepted, and a request can match the document yet name a model
#: this server does not have, or carry a control character in a path (a 400 naming the field,
#: as it should be). Else the four in CHECKS.
ALL_CHECKS = os.environ.get("HUABU_FUZZ_CHECKS", "") == "all"
pytestmark = pytest.mark.slow  # its own server: not for make test-fast


def no_server_error(ctx, response, case) -> None:
    """No 5xx, except a 504 the operation documents (a synchronous route's task timed out)."""
    status = response.status_code
    documented = str(status) in case.operation.definition.raw.get("responses", {})
    if status >= 500 and not (status == 504 and documented):
        raise AssertionError(f"{status} from {case.method} {case.path}: {response.text[:500]}")


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _operations() -> dict[str, APIOperation]:
    """Every operation of the document, read from the app itself (the document does not
    depend on the database, so collection needs no server)."""
    import tempfile

    with tempfile.TemporaryDirectory() as home:
        document = create_app(Settings(home=home)).openapi()
    schema = schemathesis.openapi.from_dict(document)
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        found[f"{operation.method.upper()} {operation.path}"] = operation
    return found


OPERATIONS = _operations()


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_no_input_is_a_server_error_or_off_the_document(label, api_server):
    operation = OPERATIONS[label]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    headers = {"Authorization": f"Bearer {api_server.key}"}

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case):
        response = case.call(base_url=api_server.url, headers=headers, timeout=60)
        content_type = response.headers.get("content-type", [""])[0]
        WATCH.check(
            case.method, response.request.url, response.status_code, content_type, response.text
        )
        if ALL_CHECKS:
            case.validate_response(
                response,
                additional_checks=[no_server_error],
                excluded_checks=[not_a_server_error, positive_data_acceptance],
                headers=headers,
            )
        else:
            case.validate_response(response, checks=CHECKS, headers=headers)

    fuzz()


#: What an attacker puts in a value: NUL, control characters, lone surrogates, numbers past
#: every range, nesting past every parser's depth, and plain text around them.
HOSTILE_TEXT = st.one_of(
    st.text(st.sampled_from(["a", "\x00", "\n", "\r", "\ud800", "\udfff", "%", "/", "猫", "é"]),
            max_size=12),
    st.sampled_from(["9" * 400, "1e400", "-1e400", "NaN", "Infinity", "-0", "18446744073709551616",
                     "[" * 3000, "{" * 3000, "..", "../../etc/passwd", "%00", "\x00" * 50]),
)  # fmt: skip
HOSTILE_JSON = st.recursive(
    st.one_of(
        HOSTILE_TEXT,
        st.integers(min_value=-(2**80), max_value=2**80),
        st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0]),
        st.booleans(),
        st.none(),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(HOSTILE_TEXT, inner, max_size=3)),
    max_leaves=8,
)  # fmt: skip


def _encoded(value: str) -> str:
    from urllib.parse import quote

    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_hostile_values_in_paths_queries_and_bodies_are_never_a_server_error(label, api_server):
    """Every operation, its path and query parameters (and, for one that takes a JSON body,
    its fields) filled with NUL, surrogates, huge numbers and deep nesting: a 4xx, never a
    5xx (except a synchronous route's documented 504)."""
    import json

    import httpx

    operation = OPERATIONS[label]
    definition = operation.definition.raw
    parameters = definition.get("parameters", [])
    names = {
        where: [p["name"] for p in parameters if p["in"] == where] for where in ("path", "query")
    }
    body_schema = (
        definition.get("requestBody", {})
        .get("content", {})
        .get("application/json", {})
        .get("schema")
    )
    fields = list((body_schema or {}).get("properties", {}))[:6]
    headers = {"Authorization": f"Bearer {api_server.key}", "Content-Type": "application/json"}

    @given(
        path=st.fixed_dictionaries({name: HOSTILE_TEXT for name in names["path"]}),
        query=st.fixed_dictionaries({name: HOSTILE_TEXT for name in names["query"]}),
        body=st.fixed_dictionaries({name: HOSTILE_JSON for name in fields}),
        deep=st.integers(0, 3),
    )
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(path, query, body, deep):
        url = operation.path
        for name, value in path.items():
            url = url.replace("{" + name + "}", _encoded(value) or "x")
        if query:
            url += "?" + "&".join(f"{name}={_encoded(value)}" for name, value in query.items())
        content = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
        if deep == 3:  # nesting past the JSON parser's own depth
            content = b'{"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        response = httpx.request(
            operation.method.upper(),
            api_server.url + url,
            content=content if body_schema else None,
            headers=headers,
            timeout=60,
        )
        documented = str(response.status_code) in definition.get("responses", {})
        assert response.status_code < 500 or (response.status_code == 504 and documented), (
            f"{response.status_code} from {operation.method.upper()} {url}: {response.text[:300]}"
        )
        WATCH.check(
            operation.method.upper(),
            str(response.request.url),
            response.status_code,
            response.headers.get("content-type", ""),
            response.text,
        )

    fuzz()


def test_the_api_only_server_never_loaded_torch_or_opencv(api_server):
    """After serving every operation above (an API server is torch-free; workers are not):
    no native library of torch or OpenCV is mapped into its process."""
    from pathlib import Path

    maps = Path(f"/proc/{api_server.process.pid}/maps").read_text()
    loaded = {line.rsplit("/", 1)[-1] for line in maps.splitlines() if ".so" in line}
    heavy = sorted(name for name in loaded if name.startswith(("libtorch", "libc10", "cv2")))
    assert heavy == [], heavy
    assert any(
        name.startswith("libpython") or "psycopg" in name or "_pydantic" in name for name in loaded
    )  # the check reads a real map
