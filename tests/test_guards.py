"""The pieces that keep one caller from hurting the others, tested alone: the linear parsers
read A1111's text exactly as its backtracking regexes did (hypothesis against the regexes
themselves) and stay linear on the inputs that made those quadratic; bodies are bounded and
their values checked; wrong passwords throttle; log lines cannot be forged; hosts are trusted
only when allowed."""

from __future__ import annotations

import logging
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from huabu.auth.throttle import LoginThrottle
from huabu.catalog.infotext import infotext, parameter_pairs, parse_infotext
from huabu.dialects.a1111 import lora_tags, split_loras
from huabu.errors import InvalidRequest, Overloaded, TooLarge
from huabu.logs import JsonFormatter, TextFormatter
from huabu.native import GenerationRequest
from huabu.native.prompt_syntax import parse_weights
from huabu.settings import Settings
from huabu.web.bodies import MAX_DEPTH, MAX_ITEMS, parse_json
from huabu.web.guards import allowed_hosts, host_name

#: A1111's own regexes (modules/infotext_utils.py re_param, extra_networks.re_extra_net as
#: huabu applies it to LoRAs): the reference the linear parsers must agree with.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
A1111_LORA = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)

PARAM_TEXT = st.text(alphabet='ab _-/:," \\\t\x1cé1\r', max_size=60)
LORA_TEXT = st.lists(
    st.sampled_from(["<lora:", "<LoRA:", ":", ">", "a", " ", "<", "İ", "x1", ".5", "\\"]),
    max_size=16,
).map("".join)


@settings(max_examples=3000, deadline=None)
@given(PARAM_TEXT)
def test_parameter_pairs_are_what_a1111s_regex_finds(line):
    assert parameter_pairs(line) == A1111_PARAM.findall(line)


@settings(max_examples=3000, deadline=None)
@given(LORA_TEXT)
def test_lora_tags_are_what_a1111s_regex_finds(prompt):
    expected = [(m.start(), m.end(), m[1], m[2]) for m in A1111_LORA.finditer(prompt)]
    assert lora_tags(prompt) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab, :\"'\\", max_size=40), st.integers(1, 150), st.text("xyz", max_size=8))
def test_infotext_reads_back_what_huabu_writes(prompt, steps, model):
    request = GenerationRequest.parse(
        {"model": model or "m", "prompt": prompt.strip() or "p", "steps": steps}
    )
    parsed = parse_infotext(infotext(request, 7))
    assert parsed["Steps"] == str(steps) and parsed["Seed"] == "7"
    assert parsed["Model"] == request.model


def _cpu_per_char(parse, text: str, repeat: int = 1) -> float:
    started = time.process_time()
    for _ in range(repeat):
        parse(text)
    return (time.process_time() - started) / (repeat * len(text))


def assert_linear(parse, long: str, short: str) -> None:
    """A long input costs per character about what a short one does (CPU time, so another
    process's load does not count); a quadratic parser's cost per character grows with the
    length: thousands of times here."""
    assert _cpu_per_char(parse, long) < 50 * _cpu_per_char(parse, short, repeat=2000)


@pytest.mark.parametrize(
    "line",
    [
        "a" * 200_000,  # one run of key characters, no colon: quadratic for the regex
        "ab: " + '"x, ab: ' * 30_000,  # unclosed quotes
        "Steps: 20, " * 20_000,
    ],
)
def test_parameter_pairs_take_linear_time(line):
    assert_linear(parameter_pairs, line, "Steps: 20, Sampler: Euler a, Seed: 1")


@pytest.mark.parametrize(
    "prompt", ["<lora:a:b:" * 20_000, "<lora::" * 30_000 + ">", "<lora:" + "a" * 200_000]
)
def test_lora_tags_take_linear_time(prompt):
    assert_linear(lora_tags, prompt, "a cat <lora:style:0.5> on a mat <lora:other>")


def test_split_loras_still_strips_tags_and_reads_weights():
    prompt, loras = split_loras("a cat <lora:style:0.5>, <LORA:other> on a mat")
    assert prompt == "a cat ,  on a mat"
    assert [(lora.name, lora.weight) for lora in loras] == [("style", 0.5), ("other", 1.0)]
    with pytest.raises(InvalidRequest, match="prompt"):
        split_loras("<lora:x:heavy>")


def test_prompt_weights_and_breaks_mean_what_they_meant():
    assert parse_weights("a (b:1.5) c") == [("a ", 1.0), ("b", 1.5), (" c", 1.0)]
    assert parse_weights("a  BREAK  b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    # A colon followed by a long run of digits and no bracket is text, found in linear time.
    assert parse_weights("(x:" + "1" * 50_000)[0][0].startswith("x:")


# -- bodies ------------------------------------------------------------------------------------


def test_deep_nesting_is_refused_whether_the_parser_or_the_check_finds_it():
    with pytest.raises(InvalidRequest, match="nest"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    shallow_enough_for_json = b'{"a": ' + b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5) + b"}"
    with pytest.raises(InvalidRequest, match="nest") as refused:
        parse_json(shallow_enough_for_json)
    assert refused.value.param.startswith("a.0.0")


def test_a_body_with_too_many_items_is_refused_before_parsing():
    with pytest.raises(TooLarge):
        parse_json(b'{"a": [' + b"1," * MAX_ITEMS + b"1]}")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b'{"prompt": "a\\u0000b"}', "prompt"),
        (b'{"prompt": "\\ud800"}', "prompt"),
        (b'{"x": {"\\ud800": 1}}', "x.\\ud800"),  # as an error message can carry it
        (b'{"list": [1, 1e400]}', None),
        (b'{"n": Infinity}', None),
        (b'{"n": NaN}', None),
        (b'{"seed": 99999999999999999999999}', "seed"),
    ],
)
def test_values_no_layer_below_can_hold_are_refused_naming_the_field(raw, param):
    with pytest.raises(InvalidRequest) as refused:
        parse_json(raw)
    if param is not None:
        assert refused.value.param == param


def test_ordinary_bodies_pass_unchanged():
    assert parse_json(b'{"prompt": "\\u732b \\ud83d\\ude00", "cfg": 7.5, "seed": -1}') == {
        "prompt": "猫 😀",
        "cfg": 7.5,
        "seed": -1,
    }


# -- wrong passwords ---------------------------------------------------------------------------


def test_wrong_passwords_wait_per_account_and_per_address_doubling():
    now = [0.0]
    throttle = LoginThrottle(3, 5, clock=lambda: now[0])
    alice = throttle.keys("Alice@example.com", "10.0.0.1")
    for _ in range(3):
        throttle.check(alice)
        throttle.failed(alice)
    with pytest.raises(Overloaded) as waiting:
        throttle.check(alice)
    assert waiting.value.retry_after == 2  # 1 s, rounded up
    now[0] += 1.01
    throttle.check(alice)
    throttle.failed(alice)  # the fourth: 2 s now
    now[0] += 1.5
    with pytest.raises(Overloaded):
        throttle.check(alice)
    # Another account from the same address: free until the address's own limit (5).
    bob = throttle.keys("bob@example.com", "10.0.0.1")
    throttle.check(bob)
    throttle.failed(bob)  # the address's fifth failure
    with pytest.raises(Overloaded):
        throttle.check(throttle.keys("carol@example.com", "10.0.0.1"))
    throttle.check(throttle.keys("carol@example.com", "10.0.0.2"))
    now[0] += 10
    throttle.succeeded(alice)
    throttle.check(alice)


# -- logs and hosts ----------------------------------------------------------------------------


def _record(message: str, *args) -> logging.LogRecord:
    return logging.LogRecord("huabu.web", logging.ERROR, __file__, 1, message, args, None)


def test_request_data_cannot_start_a_log_line():
    forged = "/tasks/x\n2026-12-07 10:00:00 INFO huabu.web: admin logged in\r"
    text = TextFormatter("%(levelname)s %(message)s").format(_record("error on %s", forged))
    assert "\n" not in text and "\r" not in text
    assert "\\n2026-12-07" in text
    import json

    entry = json.loads(JsonFormatter().format(_record("error on %s", forged)))
    assert entry["message"] == f"error on {forged}" and entry["level"] == "ERROR"


def test_hosts_allowed_by_default_are_the_bound_address_and_loopback():
    allowed = allowed_hosts(Settings(host="0.0.0.0"))
    assert allowed == {"localhost", "127.0.0.1", "::1"}
    allowed = allowed_hosts(Settings(host="10.1.2.3", public_url="https://img.example.com/"))
    assert {"10.1.2.3", "img.example.com", "localhost"} <= allowed
    assert allowed_hosts(Settings(allowed_hosts=["*"])) is None
    assert allowed_hosts(Settings(allowed_hosts=["Api.Example.com"])) == {"api.example.com"}
    assert host_name("[::1]:8000") == "::1" and host_name("Example.com:80") == "example.com"
    assert host_name("::1") == "::1"


# -- the last check before a row is written ----------------------------------------------------


def test_no_row_holds_what_postgresql_cannot_store(accounts):
    """Whatever path a value takes into a row, it is a 400 naming the column, and nothing is
    written: not a database error."""
    from sqlalchemy import func, select

    from huabu.db.tables import User

    sessions = accounts.sessions
    with sessions() as session:
        before = session.scalar(select(func.count()).select_from(User))
    for user, param in (
        (User(email="x" * 400 + "@example.com"), "email"),
        (User(email="nul\x00@example.com"), "email"),
        (User(email="opts@example.com", options={"cfg": float("inf")}), "options.cfg"),
        (User(email="opts@example.com", options={"\ud800": 1}), "options.\\ud800"),
    ):
        with pytest.raises(InvalidRequest) as refused, sessions.begin() as session:
            session.add(user)
        assert refused.value.param == param
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(User)) == before
