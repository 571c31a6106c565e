"""Choosing which heads or neurons to remove from their scores, and removing them (trainer-agnostic)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

from ..types import SCOPES
from .gates import GroupScores
from .surgery import prune_heads, prune_neurons

logger = logging.get_logger(__name__)


def _candidates(scores: Mapping[int, torch.Tensor]) -> dict[int, list[tuple[float, int]]]:
    """`{layer: [(score, original index), ...]}` over the groups still present (non-nan scores)."""
    result: dict[int, list[tuple[float, int]]] = {}
    for layer, values in scores.items():
        values = torch.as_tensor(values).detach().float().cpu().reshape(-1)
        alive = [(float(v), i) for i, v in enumerate(values.tolist()) if not math.isnan(v)]
        if alive:
            result[int(layer)] = alive
    return result


def _count(amount: int | float, n: int, where: str) -> int:
    if isinstance(amount, bool):
        raise ValueError(f"`amount` must be an int count or a float fraction, got {amount!r}.")
    if isinstance(amount, int):
        if not 0 <= amount <= n:
            raise ValueError(f"`amount`={amount} groups to remove, but {where} has {n} remaining.")
        return amount
    if isinstance(amount, float) and 0.0 <= amount <= 1.0:
        return round(amount * n)
    raise ValueError(f"`amount` must be an int count or a float fraction in [0, 1], got {amount!r}.")


def select_structures(
    scores: GroupScores,
    amount: int | float,
    scope: str = "global",
    min_remaining: int = 1,
) -> dict[int, list[int]]:
    """
    Pick the lowest-scoring groups (heads or neurons) to remove.

    Args:
        scores (`GroupScores`):
            `{layer: tensor}` with one score per original index and `nan` for groups already removed, as returned by
            the scorers (`magnitude_scores(model)["heads"]`, ...). Higher means more important.
        amount (`int` or `float`):
            A float in [0, 1] is the fraction of the REMAINING groups to remove (rounded to the nearest integer); an
            int is a number of groups. With `scope="layer"` it applies to each layer separately.
        scope (`str`, *optional*, defaults to `"global"`):
            `"global"` ranks all layers together; `"layer"` ranks within each layer.
        min_remaining (`int`, *optional*, defaults to 1):
            Groups that must survive in every layer (1 never removes the last head of a layer; 0 allows emptying a
            layer). When a global selection is capped by it, the next-lowest groups of other layers are taken
            instead; if even that falls short a warning is logged.

    Returns:
        `dict[int, list[int]]`: `{layer: sorted original indices}` to pass to `prune_heads` / `prune_neurons`; layers
        with nothing to remove are omitted. Ties are broken by layer, then index.
    """
    if scope not in SCOPES:
        raise ValueError(f"`scope` must be one of {SCOPES}, got {scope!r}.")
    if isinstance(min_remaining, bool) or not isinstance(min_remaining, int) or min_remaining < 0:
        raise ValueError(f"`min_remaining` must be a non-negative int, got {min_remaining!r}.")
    candidates = _candidates(scores)
    chosen: dict[int, list[int]] = {}
    if scope == "layer":
        for layer, alive in candidates.items():
            want = _count(amount, len(alive), f"layer {layer}")
            k = min(want, max(len(alive) - min_remaining, 0))
            if k < want:
                logger.warning(f"Layer {layer}: removing {k} groups instead of {want} to keep {min_remaining}.")
            if k:
                chosen[layer] = sorted(i for _, i in sorted(alive)[:k])
        return chosen
    ranked = sorted((score, layer, index) for layer, alive in candidates.items() for score, index in alive)
    want = _count(amount, len(ranked), "the model")
    left = {layer: len(alive) for layer, alive in candidates.items()}
    taken = 0
    for _, layer, index in ranked:
        if taken == want:
            break
        if left[layer] <= min_remaining:
            continue
        chosen.setdefault(layer, []).append(index)
        left[layer] -= 1
        taken += 1
    if taken < want:
        logger.warning(f"Removing {taken} groups instead of {want}: every layer keeps at least {min_remaining}.")
    return {layer: sorted(ids) for layer, ids in sorted(chosen.items())}


def select_below(scores: GroupScores, threshold: float, min_remaining: int = 1) -> dict[int, list[int]]:
    """
    Pick every group whose score is below `threshold` (e.g. learned gates near 0 after polarization).

    Args:
        scores (`GroupScores`):
            `{layer: tensor}` in the original numbering, `nan` for removed groups.
        threshold (`float`):
            Groups scoring strictly below it are selected.
        min_remaining (`int`, *optional*, defaults to 1):
            Groups that must survive in every layer: the highest-scoring ones of a layer are spared if needed.

    Returns:
        `dict[int, list[int]]`: `{layer: sorted original indices}`.
    """
    chosen: dict[int, list[int]] = {}
    for layer, alive in _candidates(scores).items():
        below = sorted((s, i) for s, i in alive if s < threshold)
        k = min(len(below), max(len(alive) - min_remaining, 0))
        if k:
            chosen[layer] = sorted(i for _, i in below[:k])
    return chosen


def compact(
    model: PreTrainedModel,
    heads: Mapping[int, Iterable[int]] | None = None,
    neurons: Mapping[int, Iterable[int]] | None = None,
) -> PreTrainedModel:
    """
    Remove the selected heads and neurons in place (the "compact for inference" step).

    Args:
        model (`PreTrainedModel`):
            A model of a supported family.
        heads (`Mapping[int, Iterable[int]]`, *optional*):
            `{layer: [original head indices]}`, e.g. from [`select_structures`].
        neurons (`Mapping[int, Iterable[int]]`, *optional*):
            `{layer: [original neuron indices]}`.

    Returns:
        `PreTrainedModel`: the same model, shrunk.
    """
    if heads:
        prune_heads(model, heads)
    if neurons:
        prune_neurons(model, neurons)
    return model
