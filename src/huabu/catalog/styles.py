"""Prompt styles as A1111 keeps them: ``$HUABU_HOME/styles.csv`` with the columns ``name``,
``prompt`` and ``negative_prompt``. A style's prompt with ``{prompt}`` in it takes the
request's prompt there; one without is appended after a comma. The negative prompt likewise.
Applied when a request is accepted, in the order asked; an unknown name is a 400 naming
``styles``. The file is read again when it changes (no restart)."""

from __future__ import annotations

import csv
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from huabu.errors import InvalidRequest
from huabu.native import GenerationRequest
from huabu.native.generation import MAX_PROMPT
from huabu.settings import Settings


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


_cache: dict[Path, tuple[tuple[int, int], dict[str, Style]]] = {}
_lock = threading.Lock()


def styles_path(settings: Settings) -> Path:
    return settings.home / "styles.csv"


def read_styles(settings: Settings) -> dict[str, Style]:
    """The styles in the file, by name, in its order (none without a file). A1111's older
    ``text`` column stands for ``prompt``."""
    path = styles_path(settings)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    styles: dict[str, Style] = {}
    with path.open(encoding="utf-8-sig", newline="") as file:
        for row in csv.DictReader(file, skipinitialspace=True):
            name = (row.get("name") or "").strip()
            if name:
                prompt = row.get("prompt") or row.get("text") or ""
                styles[name] = Style(name, prompt, row.get("negative_prompt") or "")
    with _lock:
        _cache[path] = (stamp, styles)
    return styles


def merge(style: str, prompt: str) -> str:
    """A style's text with the prompt: in its ``{prompt}``, or the two joined by a comma."""
    if "{prompt}" in style:
        return style.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style.strip()) if part)


def style_prompts(
    prompt: str, negative: str, names: Sequence[str], settings: Settings
) -> tuple[str, str]:
    """The prompt and negative prompt with the styles ``names`` applied, in order."""
    if not names:
        return prompt, negative
    styles = read_styles(settings)
    for name in names:
        style = styles.get(name)
        if style is None:
            known = ", ".join(styles) or f"none: {styles_path(settings).name} has no styles"
            raise InvalidRequest(f"styles: unknown style {name!r}; styles: {known}", param="styles")
        prompt = merge(style.prompt, prompt)
        negative = merge(style.negative_prompt, negative)
    for field, text in (("prompt", prompt), ("negative_prompt", negative)):
        if len(text) > MAX_PROMPT:
            raise InvalidRequest(
                f"styles: with its styles the {field} is {len(text)} characters, over the "
                f"limit of {MAX_PROMPT}",
                param="styles",
            )
    return prompt, negative


def apply_styles(request: GenerationRequest, settings: Settings) -> GenerationRequest:
    """``request`` with its styles in its prompts (and its ``styles`` emptied)."""
    if not request.styles:
        return request
    prompt, negative = style_prompts(
        request.prompt, request.negative_prompt, request.styles, settings
    )
    return request.model_copy(update={"prompt": prompt, "negative_prompt": negative, "styles": ()})
