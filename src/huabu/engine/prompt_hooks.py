"""Prompts that change as the UNet runs: prompt editing and alternation switch the
conditioning at each model call, composable diffusion (``AND``) runs the UNet once for each
part and adds up their guidance. The same hooks serve diffusers' pipelines and huabu's
k-diffusion loop, so both samplers' families read a prompt alike.

A1111 counts a pass's model calls (a second-order sampler's two a step, against a schedule
twice as long), starting again at 0 in a hires pass and going on into the refiner; so does
``Calls``. With ``AND`` the UNet's batch of ``[negative, prompt]`` becomes
``[negative, part 1, …, part k]`` (every batched input widened alike) and its output is put
back as ``[negative, negative + Σ wᵢ·(partᵢ − negative)]``: the pipeline's CFG on that is
A1111's ``uncond + Σ wᵢ·scale·(condᵢ − uncond)``. ControlNets read the prompt too: they are
given the negative and the first part.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from huabu.engine.prompts import Timeline


class Calls:
    """The model calls of one sampling pass, counted from 0 (a refiner goes on counting)."""

    def __init__(self) -> None:
        self.count = 0


@contextmanager
def following(
    unet: Any,
    timeline: Timeline | None,
    calls: Calls,
    images: int,
    controlnets: Sequence[Any] = (),
) -> Iterator[None]:
    """While the block runs, ``unet`` (and the ``controlnets``) read the conditioning that
    ``timeline`` gives the current model call, for a batch of ``images`` images (twice that
    with CFG). Nothing is hooked without a timeline."""
    if timeline is None:
        yield
        return
    state: dict[str, Any] = {}
    made = _Rows(timeline, images)

    def before_unet(module, args, kwargs):
        call = calls.count
        calls.count += 1
        negative, parts = timeline.at(call)
        sample = args[0] if args else kwargs["sample"]
        cfg = sample.shape[0] == 2 * images
        state.update(cfg=cfg, weights=[weight for _, weight in parts])
        if not timeline.composed:
            rows = [negative, parts[0][0]] if cfg else [parts[0][0]]
            return args, _conditioned(kwargs, made, rows)
        # [negative, part 1, …, part k]: without CFG the negative half is added here.
        rows = [negative, *(row for row, _ in parts)]
        copies = [0, *([1] * len(parts))] if cfg else [0] * (len(parts) + 1)
        widen = _widener(sample.shape[0], images, copies)
        args = tuple(widen(value) for value in args)
        kwargs = {name: widen(value) for name, value in kwargs.items()}
        return args, _conditioned(kwargs, made, rows)

    def after_unet(module, args, output):
        if not timeline.composed:
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample
        pieces = sample.float().split(images)
        negative = pieces[0]
        combined = negative.clone()
        for weight, part in zip(state["weights"], pieces[1:], strict=True):
            combined += weight * (part - negative)
        result = (torch.cat([negative, combined]) if state["cfg"] else combined).to(sample.dtype)
        if isinstance(output, tuple):
            return (result, *output[1:])
        output.sample = result
        return output

    def before_controlnet(module, args, kwargs):
        negative, parts = timeline.at(calls.count)
        sample = args[0] if args else kwargs["sample"]
        rows = [negative, parts[0][0]] if sample.shape[0] == 2 * images else [parts[0][0]]
        return args, _conditioned(kwargs, made, rows)

    with ExitStack() as stack:
        hooks = [
            unet.register_forward_pre_hook(before_unet, with_kwargs=True),
            unet.register_forward_hook(after_unet),
            *(
                net.register_forward_pre_hook(before_controlnet, with_kwargs=True)
                for net in controlnets
            ),
        ]
        for hook in hooks:
            stack.callback(hook.remove)
        yield


class _Rows:
    """The batched conditioning of each combination of rows, made once per pass (a schedule
    has a few): the hooks' per-call cost is a dictionary lookup."""

    def __init__(self, timeline: Timeline, images: int) -> None:
        self.timeline, self.images = timeline, images
        self.made: dict[tuple, torch.Tensor] = {}

    def context(self, rows: list[int], like: torch.Tensor) -> torch.Tensor:
        key = ("context", *rows)
        if key not in self.made:
            self.made[key] = torch.cat(
                [
                    self.timeline.embeds[row]
                    .to(like.device, like.dtype)
                    .expand(self.images, -1, -1)
                    for row in rows
                ]
            )
        return self.made[key]

    def pooled(self, rows: list[int], like: torch.Tensor) -> torch.Tensor:
        key = ("pooled", *rows)
        if key not in self.made:
            pooled = [self.timeline.pooled[row] for row in rows]
            self.made[key] = torch.cat(
                [
                    p.to(like.device, like.dtype).expand(self.images, -1)
                    for p in pooled
                    if p is not None
                ]
            )
        return self.made[key]


def _conditioned(kwargs: dict[str, Any], made: _Rows, rows: list[int]) -> dict[str, Any]:
    """``kwargs`` with the text conditioning of ``rows``: the encoder's hidden states, and
    SDXL's pooled text among the added conditions."""
    kwargs = dict(kwargs)
    kwargs["encoder_hidden_states"] = made.context(rows, kwargs["encoder_hidden_states"])
    added = kwargs.get("added_cond_kwargs")
    if added and "text_embeds" in added:
        kwargs["added_cond_kwargs"] = dict(added) | {
            "text_embeds": made.pooled(rows, added["text_embeds"])
        }
    return kwargs


def _widener(batch: int, images: int, copies: list[int]):
    """A function that rebuilds every input batched like the sample (``batch`` rows, in
    halves of ``images`` with CFG) as the rows of ``copies``: half 0 (the negative's, or the
    only one) or half 1 (the prompt's), one block each."""

    def widen(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 or value.shape[0] != batch:
                return value
            halves = value.split(images)
            return torch.cat([halves[i] for i in copies])
        if isinstance(value, dict):
            return {key: widen(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(widen(item) for item in value)
        return value

    return widen
