"""huabu's prompt syntax, which is A1111's: the one place where a prompt's text is read.

- Emphasis: ``(word)`` ×1.1, ``((word))`` ×1.21, ``[word]`` ÷1.1, ``(word:1.3)`` ×1.3, ``\\(``
  a literal bracket, ``BREAK`` a new 75-token chunk (``parse_weights``).
- Prompt editing: ``[from:to:when]``, ``[to:when]`` (nothing, then ``to``), ``[from::when]``
  (``from``, then nothing), nestable; ``when`` is a step number (``10``) or, written with a
  point, a fraction of the steps (``0.5``). In a hires pass a fraction above 1 (``1.5``) and a
  step number above the first pass's count reach into the second pass (``schedule``).
- Alternation: ``[a|b|c]`` takes the next word at every step (``schedule``).
- Composable diffusion: ``a AND b :1.2``, each part its own conditioning and weight
  (``split_and``).

A prompt that does not parse as editing and alternation (a ``|`` outside square brackets, a
trailing lone backslash) is read as plain text, as A1111 does, and its emphasis still applies.
Pure Python, no torch: the API side checks requests with it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROUND_UP = 1.1

_TOKEN = re.compile(
    r"""\\[()\[\]\\]        # escaped bracket or backslash
      | \(|\[               # openers
      | :\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)   # explicit weight closing a round bracket
      | \)|\]               # closers
      | [^\\()\[\]:]+       # plain text
      | [:\\]               # a lone colon or backslash
    """,
    re.VERBOSE,
)
#: The whitespace around a BREAK goes with it (stripped from the parts, not matched: a regex
#: starting with ``\s*`` is quadratic in a long run of spaces).
_BREAK = re.compile(r"\bBREAK\b")


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into (text, weight) runs; ``("BREAK", -1)`` marks a chunk break."""
    runs: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _TOKEN.finditer(prompt):
        token, weight = match[0], match[1]
        if token.startswith("\\") and len(token) == 2:
            runs.append([token[1], 1.0])
        elif token == "(":
            rounds.append(len(runs))
        elif token == "[":
            squares.append(len(runs))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif token == ")" and rounds:
            scale(rounds.pop(), ROUND_UP)
        elif token == "]" and squares:
            scale(squares.pop(), 1 / ROUND_UP)
        else:
            parts = _BREAK.split(token)
            parts = [part if i == 0 else part.lstrip() for i, part in enumerate(parts)]
            parts = [part if i == len(parts) - 1 else part.rstrip() for i, part in enumerate(parts)]
            for i, part in enumerate(parts):
                if i:
                    runs.append(["BREAK", -1.0])
                if part:
                    runs.append([part, 1.0])
    for start in rounds:  # unclosed brackets apply to the rest of the prompt, as in A1111
        scale(start, ROUND_UP)
    for start in squares:
        scale(start, 1 / ROUND_UP)

    merged: list[tuple[str, float]] = []
    for text, weight in runs:
        if merged and merged[-1][1] == weight and weight != -1.0:
            merged[-1] = (merged[-1][0] + text, weight)
        else:
            merged.append((text, weight))
    return merged or [("", 1.0)]


# --- prompt editing and alternation -------------------------------------------------------

#: Plain text: anything but brackets, colons and bars, or an escaped character.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.DOTALL)
#: A step number or fraction closing a ``[...:when]``, with the spaces around it.
_WHEN = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)\s*\]")
#: What may stand alone, as text, where no construct fits (the bar may not).
_STRAY = "[]():"


@dataclass(frozen=True)
class _Edit:
    before: tuple | None  # None: ``[to:when]``
    after: tuple
    when: str  # as written: a point makes it a fraction


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple, ...]


class _Parser:
    """A recursive-descent reading of A1111's prompt grammar: ``(`` and ``[`` groups keep
    their brackets as text (emphasis is read later); ``[..:..:when]`` and ``[..|..]`` become
    nodes; at the top level a bracket or colon that closes nothing is text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def top(self) -> tuple | None:
        nodes: list = []
        at = 0
        while at < len(self.text):
            part, at = self.sequence(at)
            nodes.extend(part)
            if at < len(self.text):
                if self.text[at] not in _STRAY:
                    return None  # a bar outside square brackets, a lone trailing backslash
                nodes.append(self.text[at])
                at += 1
        return tuple(nodes)

    def sequence(self, at: int) -> tuple[list, int]:
        """Items up to the first character none of them can start with."""
        nodes: list = []
        while at < len(self.text):
            plain = _PLAIN.match(self.text, at)
            if plain:
                nodes.append(plain[0])
                at = plain.end()
                continue
            char = self.text[at]
            found = self.round(at) if char == "(" else self.square(at) if char == "[" else None
            if found is None:
                break
            node, at = found
            nodes.extend(node)
        return nodes, at

    def round(self, at: int) -> tuple[list, int] | None:
        """``(prompt)`` or ``(prompt:prompt)``, kept as text around its items."""
        inner, end = self.sequence(at + 1)
        nodes = ["(", *inner]
        if end < len(self.text) and self.text[end] == ":":
            second, end = self.sequence(end + 1)
            nodes += [":", *second]
        if end < len(self.text) and self.text[end] == ")":
            return [*nodes, ")"], end + 1
        return None

    def square(self, at: int) -> tuple[list, int] | None:
        """``[from:to:when]``, ``[to:when]``, ``[a|b|…]`` or ``[prompt]``."""
        first, end = self.sequence(at + 1)
        if end >= len(self.text):
            return None
        char = self.text[end]
        if char == "]":
            return ["[", *first, "]"], end + 1
        if char == "|":
            options = [tuple(first)]
            while end < len(self.text) and self.text[end] == "|":
                option, end = self.sequence(end + 1)
                options.append(tuple(option))
            if end < len(self.text) and self.text[end] == "]":
                return [_Alternation(tuple(options))], end + 1
            return None
        if char != ":":
            return None
        when = _WHEN.match(self.text, end + 1)
        if when:
            return [_Edit(None, tuple(first), when[1])], when.end()
        second, end = self.sequence(end + 1)
        if end < len(self.text) and self.text[end] == ":":
            when = _WHEN.match(self.text, end + 1)
            if when:
                return [_Edit(tuple(first), tuple(second), when[1])], when.end()
        return None


def _parse(prompt: str) -> tuple | None:
    """The prompt's nodes, or None when the prompt has neither editing nor alternation (or
    does not parse): then it is one text throughout."""
    if "[" not in prompt:
        return None
    nodes = _Parser(prompt).top()
    if nodes is None or all(isinstance(node, str) for node in nodes):
        return None
    return nodes


def _switch_step(when: str, steps: int, offset: int, fraction_offset: float) -> int:
    value = float(when)
    value = (value - fraction_offset) * steps if "." in when else value - offset
    return min(steps, int(value))


def schedule(prompt: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """The prompt's texts over the steps, as A1111 schedules them: ``(end, text)`` pairs, a
    text holding for the steps up to its ``end`` (``[cat:dog:0.5]`` over 20 steps →
    ``[(10, "cat"), (20, "dog")]``). With ``hires_steps``, the schedule of the hires pass:
    fractions count from 1 and step numbers from the first pass's ``steps``, so what switched
    in the first pass stays switched."""
    nodes = _parse(prompt)
    if nodes is None:
        return [(hires_steps or steps, prompt)]
    if hires_steps is None:
        offset, fraction_offset, total = 0, 0.0, steps
    else:
        offset, fraction_offset, total = steps, 1.0, hires_steps

    switches = {total}

    def collect(items: tuple) -> None:
        for node in items:
            if isinstance(node, _Edit):
                step = _switch_step(node.when, total, offset, fraction_offset)
                if step >= 1:
                    switches.add(step)
                collect(node.before or ())
                collect(node.after)
            elif isinstance(node, _Alternation):
                switches.update(range(1, total + 1))
                for option in node.options:
                    collect(option)

    def text(items: tuple, step: int) -> str:
        out = []
        for node in items:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, _Edit):
                at = _switch_step(node.when, total, offset, fraction_offset)
                out.append(text(node.before or (), step) if step <= at else text(node.after, step))
            else:
                out.append(text(node.options[(step - 1) % len(node.options)], step))
        return "".join(out)

    collect(nodes)
    return [(step, text(nodes, step)) for step in sorted(switches)]


def is_scheduled(prompt: str) -> bool:
    """Whether the prompt edits or alternates (its text changes over the steps)."""
    return _parse(prompt) is not None


# --- composable diffusion -----------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """The parts of a composable prompt with their weights: ``"a cat AND a dog :0.5"`` →
    ``[("a cat", 1.0), (" a dog", 0.5)]``. A prompt without ``AND`` is one part, and its
    weight is read too (``"a cat :1.5"`` guides 1.5 times as hard), as A1111 reads it."""
    parts = []
    for part in _AND.split(prompt):
        weight = _PART_WEIGHT.search(part)
        if weight:
            parts.append((part[: weight.start()], float(weight[1])))
        else:
            parts.append((part.rstrip(), 1.0))
    return parts


def has_and(prompt: str) -> bool:
    """Whether the prompt has an ``AND`` (in capitals, a word of its own)."""
    return _AND.search(prompt) is not None


def is_composed(prompt: str) -> bool:
    """Whether the prompt is more than one part at weight 1."""
    parts = split_and(prompt)
    return len(parts) > 1 or parts[0][1] != 1.0
