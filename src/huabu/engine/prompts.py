"""Prompts as A1111 users write them, turned into text-encoder conditioning.

Syntax: ``(word)`` ×1.1, ``((word))`` ×1.21, ``[word]`` ÷1.1, ``(word:1.3)`` ×1.3, ``\\(``
literal bracket, ``BREAK`` starts a new 75-token chunk. Prompts longer than 75 tokens are split
into chunks of 75 (+ start/end tokens = 77), each encoded separately and concatenated, so
nothing is truncated. Token weights scale the embeddings, then the chunk's mean is restored —
A1111's semantics, so prompts copied from A1111 or civitai mean the same thing here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

ROUND_UP = 1.1
CHUNK_TOKENS = 75
#: How far back from a chunk's end a comma may be for the words after it to move on.
COMMA_BACKTRACK = 20

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


def _comma_id(tokenizer) -> int | None:
    """The id of CLIP's "," token, if the vocabulary has one (a lookup: transformers builds a
    new 49,408-entry dictionary on every ``get_vocab()`` call)."""
    token_id = tokenizer.convert_tokens_to_ids(",</w>")
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


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


@dataclass
class Chunks:
    """Token ids and weights, cut into chunks of at most 75 tokens."""

    ids: list[list[int]]
    weights: list[list[float]]


def tokenize(tokenizer, prompt: str) -> Chunks:
    """Tokenize a weighted prompt into chunks (without start/end tokens).

    As A1111 does (``comma_padding_backtrack``, 20 by default): when a chunk is full and its
    last comma is at most 20 tokens back, the words after that comma move to the next chunk,
    so a phrase is not cut in two."""
    chunks = Chunks([[]], [[]])
    comma = _comma_id(tokenizer)
    last_comma = -1

    def next_chunk() -> None:
        nonlocal last_comma
        chunks.ids.append([])
        chunks.weights.append([])
        last_comma = -1

    for text, weight in parse_weights(prompt):
        if weight == -1.0:  # BREAK
            next_chunk()
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            ids, weights = chunks.ids[-1], chunks.weights[-1]
            if token == comma:
                last_comma = len(ids)
            elif (
                len(ids) == CHUNK_TOKENS
                and last_comma != -1
                and (len(ids) - last_comma <= COMMA_BACKTRACK)
            ):
                cut = last_comma + 1
                moved_ids, moved_weights = ids[cut:], weights[cut:]
                del ids[cut:], weights[cut:]
                next_chunk()
                chunks.ids[-1].extend(moved_ids)
                chunks.weights[-1].extend(moved_weights)
            if len(chunks.ids[-1]) == CHUNK_TOKENS:
                next_chunk()
            chunks.ids[-1].append(token)
            chunks.weights[-1].append(weight)
    return chunks


@dataclass
class Conditioning:
    """Encoder outputs for a prompt and its negative, equal in length."""

    embeds: torch.Tensor  # [1, 77 * chunks, dim]
    negative_embeds: torch.Tensor
    pooled: torch.Tensor | None = None  # SDXL only: [1, dim]
    negative_pooled: torch.Tensor | None = None


class PromptEncoder:
    """Encodes prompts with a model's tokenizer(s) and text encoder(s).

    ``penultimate`` is SDXL's convention (hidden states before the last layer, no final norm,
    concatenated across encoders; pooled output from the last encoder).
    """

    def __init__(self, tokenizers, encoders, *, penultimate: bool, zero_empty_negative: bool):
        self.tokenizers = tokenizers
        self.encoders = encoders
        self.penultimate = penultimate
        self.zero_empty_negative = zero_empty_negative

    @torch.no_grad()
    def encode(self, prompt: str, negative: str, clip_skip: int = 1) -> Conditioning:
        parts, negative_parts = [], []
        pooled = negative_pooled = None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            chunks, negative_chunks = tokenize(tokenizer, prompt), tokenize(tokenizer, negative)
            length = max(len(chunks.ids), len(negative_chunks.ids))
            for c in (chunks, negative_chunks):
                c.ids += [[] for _ in range(length - len(c.ids))]
                c.weights += [[] for _ in range(length - len(c.weights))]
            embeds, pooled = self._encode_chunks(tokenizer, encoder, chunks, clip_skip)
            negative_embeds, negative_pooled = self._encode_chunks(
                tokenizer, encoder, negative_chunks, clip_skip
            )
            parts.append(embeds)
            negative_parts.append(negative_embeds)
        result = Conditioning(
            torch.cat(parts, dim=-1), torch.cat(negative_parts, dim=-1), pooled, negative_pooled
        )
        if self.zero_empty_negative and not negative.strip():
            result.negative_embeds = torch.zeros_like(result.negative_embeds)
            if result.negative_pooled is not None:
                result.negative_pooled = torch.zeros_like(result.negative_pooled)
        return result

    def _encode_chunks(self, tokenizer, encoder, chunks: Chunks, clip_skip: int):
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        outputs, pooled = [], None
        for ids, weights in zip(chunks.ids, chunks.weights, strict=True):
            padding = CHUNK_TOKENS - len(ids)
            full_ids = [bos, *ids, eos] + [pad] * padding
            full_weights = [1.0, *weights, 1.0] + [1.0] * padding
            tensor = torch.tensor([full_ids], device=encoder.device)
            out = encoder(tensor, output_hidden_states=True)
            if self.penultimate:
                hidden = out.hidden_states[-(clip_skip + 1)]
            elif clip_skip > 1:
                # transformers 5 flattened CLIPTextModel; older layouts nest it in text_model.
                final_norm = getattr(encoder, "text_model", encoder).final_layer_norm
                hidden = final_norm(out.hidden_states[-clip_skip])
            else:
                hidden = out.last_hidden_state
            if pooled is None and hasattr(out, "text_embeds"):
                pooled = out.text_embeds
            weight = torch.tensor(full_weights, device=hidden.device, dtype=hidden.dtype)
            if (weight != 1.0).any():
                original_mean = hidden.mean()
                hidden = hidden * weight[None, :, None]
                hidden = hidden * (original_mean / hidden.mean())
            outputs.append(hidden)
        return torch.cat(outputs, dim=1), pooled
