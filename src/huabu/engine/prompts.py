"""Prompts as A1111 users write them, turned into text-encoder conditioning.

Syntax: ``(word)`` ×1.1, ``((word))`` ×1.21, ``[word]`` ÷1.1, ``(word:1.3)`` ×1.3, ``\\(``
literal bracket, ``BREAK`` starts a new 75-token chunk. Prompts longer than 75 tokens are split
into chunks of 75 (+ start/end tokens = 77), each encoded separately and concatenated, so
nothing is truncated. Token weights scale the embeddings, then the chunk's mean is restored —
A1111's semantics, so prompts copied from A1111 or civitai mean the same thing here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from huabu.native.prompt_syntax import is_scheduled, parse_weights, schedule, split_and

CHUNK_TOKENS = 75
#: How far back from a chunk's end a comma may be for the words after it to move on.
COMMA_BACKTRACK = 20


def _comma_id(tokenizer) -> int | None:
    """The id of CLIP's "," token, if the vocabulary has one (a lookup: transformers builds a
    new 49,408-entry dictionary on every ``get_vocab()`` call)."""
    token_id = tokenizer.convert_tokens_to_ids(",</w>")
    return None if token_id is None or token_id == tokenizer.unk_token_id else token_id


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


@dataclass(frozen=True)
class Timed:
    """One prompt's texts over a pass's model calls: ``rows[i]`` (an index into
    ``Timeline.embeds``) until the call's index passes ``ends[i]``."""

    ends: tuple[int, ...]
    rows: tuple[int, ...]

    def at(self, call: int) -> int:
        """The row at model call ``call`` (counted from 0), as A1111 picks it: the first whose
        end is not before the call; past the last end, the first row again (a sampler that
        calls the model more often than it has steps, DPM adaptive, starts over)."""
        for end, row in zip(self.ends, self.rows, strict=True):
            if call <= end:
                return row
        return self.rows[0]


@dataclass(frozen=True)
class Timeline:
    """Prompts that edit, alternate or compose (``AND``): the conditionings of their texts,
    and which of them the negative prompt and each weighted part of the prompt take at each
    model call (``prompt_hooks`` feeds them to the UNet)."""

    embeds: tuple[torch.Tensor, ...]  # [1, 77 * chunks, dim] each, all as long
    pooled: tuple[torch.Tensor | None, ...]
    negative: Timed
    parts: tuple[tuple[Timed, float], ...]

    def at(self, call: int) -> tuple[int, list[tuple[int, float]]]:
        """(the negative's row, each part's (row, weight)) at model call ``call``."""
        return self.negative.at(call), [(timed.at(call), weight) for timed, weight in self.parts]

    @property
    def composed(self) -> bool:
        """Whether the prompt is more than one part at weight 1: the UNet runs once a part."""
        return len(self.parts) > 1 or self.parts[0][1] != 1.0


@dataclass
class Conditioning:
    """Encoder outputs for a prompt and its negative, equal in length; with a ``timeline``,
    those of the first model call."""

    embeds: torch.Tensor  # [1, 77 * chunks, dim]
    negative_embeds: torch.Tensor
    pooled: torch.Tensor | None = None  # SDXL only: [1, dim]
    negative_pooled: torch.Tensor | None = None
    timeline: Timeline | None = None


def condition(
    encoder: PromptEncoder,
    prompt: str,
    negative: str,
    *,
    clip_skip: int,
    steps: int,
    hires_steps: int | None = None,
) -> Conditioning:
    """The conditioning of one sampling pass of ``steps`` model calls (of a hires pass of
    ``hires_steps`` after them): a plain prompt's is encoded once; one that edits, alternates
    or composes gets a timeline, each distinct text encoded once."""
    parts = split_and(prompt)
    if (
        len(parts) == 1
        and parts[0][1] == 1.0
        and not is_scheduled(prompt)
        and not is_scheduled(negative)
    ):
        return encoder.encode(prompt, negative, clip_skip)
    texts: list[tuple[str, bool]] = []

    def timed(text: str, negative: bool) -> Timed:
        entries = schedule(text, steps, hires_steps)
        rows = []
        for _, each in entries:
            if (each, negative) not in texts:
                texts.append((each, negative))
            rows.append(texts.index((each, negative)))
        return Timed(tuple(end for end, _ in entries), tuple(rows))

    negative_timed = timed(negative, True)
    part_timeds = tuple((timed(text, False), weight) for text, weight in parts)
    encoded = encoder.encode_texts([text for text, _ in texts], clip_skip)
    for i, (text, is_negative) in enumerate(texts):
        if is_negative and encoder.zero_empty_negative and not text.strip():
            encoded[i] = encoder.zeros(*encoded[i])
    timeline = Timeline(
        tuple(embeds for embeds, _ in encoded),
        tuple(pooled for _, pooled in encoded),
        negative_timed,
        part_timeds,
    )
    negative_row, [(row, _), *_] = timeline.at(0)
    return Conditioning(
        timeline.embeds[row],
        timeline.embeds[negative_row],
        timeline.pooled[row],
        timeline.pooled[negative_row],
        timeline,
    )


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
        (embeds, pooled), (negative_embeds, negative_pooled) = self.encode_texts(
            [prompt, negative], clip_skip
        )
        if self.zero_empty_negative and not negative.strip():
            negative_embeds, negative_pooled = self.zeros(negative_embeds, negative_pooled)
        return Conditioning(embeds, negative_embeds, pooled, negative_pooled)

    @torch.no_grad()
    def encode_texts(
        self, texts: list[str], clip_skip: int = 1
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Each text's (embeddings, pooled embedding), all as many chunks long (the longest's):
        shorter ones end with empty chunks, so that any of them can stand in for another."""
        parts: list[list[torch.Tensor]] = [[] for _ in texts]
        pooled: list[torch.Tensor | None] = [None for _ in texts]
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            chunks = [tokenize(tokenizer, text) for text in texts]
            length = max(len(c.ids) for c in chunks)
            for c in chunks:
                c.ids += [[] for _ in range(length - len(c.ids))]
                c.weights += [[] for _ in range(length - len(c.weights))]
            for i, c in enumerate(chunks):
                embeds, pooled[i] = self._encode_chunks(tokenizer, encoder, c, clip_skip)
                parts[i].append(embeds)
        return [(torch.cat(p, dim=-1), pool) for p, pool in zip(parts, pooled, strict=True)]

    @staticmethod
    def zeros(embeds: torch.Tensor, pooled: torch.Tensor | None):
        """An empty negative prompt as SDXL's ``force_zeros_for_empty_prompt`` reads it."""
        return torch.zeros_like(embeds), None if pooled is None else torch.zeros_like(pooled)

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
