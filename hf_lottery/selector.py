"""Turn importance scores into a mask: exact-count top-k, global or per tensor, with a layer-collapse guard."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from transformers.utils import logging

from .ticket.mask import TicketMask
from .types import (
    AUTO_MIN_TENSOR_DENSITY,
    AUTO_RELATIVE_TENSOR_DENSITY,
    AUTO_TENSOR_SPARSITY,
    COLLAPSE_POLICIES,
    SCOPES,
)

logger = logging.get_logger(__name__)


class LayerCollapseError(ValueError):
    """Raised when pruning would push a tensor past `max_tensor_sparsity` and the policy is `"error"`, or when the
    requested sparsity cannot be reached without doing so."""


def resolve_max_tensor_sparsity(max_tensor_sparsity: float | str | None, sparsity: float) -> float | None:
    """The per-tensor cap the guard applies to a request for `sparsity`.

    Args:
        max_tensor_sparsity (`float`, `"auto"` or `None`): a fixed cap in (0, 1]; `None` disables the guard;
            `"auto"` keeps every tensor at a density of at least `min(0.1, 0.5 * (1 - sparsity))`, i.e. the cap
            is `max(0.9, 1 - 0.5 * (1 - sparsity))`: 0.9 up to 80 % overall, 0.95 at 90 %, 0.975 at 95 %, 0.995
            at 99 %.
        sparsity (`float`): the overall sparsity requested.

    Returns:
        `float` or `None`: the most any single tensor may be pruned.
    """
    if max_tensor_sparsity is None:
        return None
    if isinstance(max_tensor_sparsity, str):
        if max_tensor_sparsity != AUTO_TENSOR_SPARSITY:
            raise ValueError(
                f"max_tensor_sparsity must be a fraction in (0, 1] or None (or {AUTO_TENSOR_SPARSITY!r}), got "
                f"{max_tensor_sparsity!r}."
            )
        return 1.0 - min(AUTO_MIN_TENSOR_DENSITY, AUTO_RELATIVE_TENSOR_DENSITY * (1.0 - sparsity))
    if isinstance(max_tensor_sparsity, bool) or not isinstance(max_tensor_sparsity, (int, float)):
        raise TypeError(
            f"max_tensor_sparsity must be a float, {AUTO_TENSOR_SPARSITY!r} or None, got "
            f"{type(max_tensor_sparsity).__name__}."
        )
    if not 0.0 < max_tensor_sparsity <= 1.0:
        raise ValueError(
            f"max_tensor_sparsity must be in (0, 1] or None (or {AUTO_TENSOR_SPARSITY!r}), got {max_tensor_sparsity}."
        )
    return float(max_tensor_sparsity)


def _guard_name(max_tensor_sparsity: float | str | None, cap: float | None) -> str:
    if max_tensor_sparsity == AUTO_TENSOR_SPARSITY:
        return f"max_tensor_sparsity={AUTO_TENSOR_SPARSITY!r} (a cap of {cap:.4g} at this sparsity)"
    return f"max_tensor_sparsity={max_tensor_sparsity}"


def _prune_lowest(flat_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean `keep` vector pruning exactly the `k` lowest scores; ties broken by the lower index first."""
    n = flat_scores.numel()
    if k <= 0:
        return torch.ones(n, dtype=torch.bool)
    if k >= n:
        return torch.zeros(n, dtype=torch.bool)
    threshold = flat_scores.kthvalue(k).values
    pruned = flat_scores < threshold
    remaining = k - int(pruned.sum())
    ties = flat_scores == threshold
    n_ties = int(ties.sum())
    if remaining == n_ties:
        pruned |= ties
    elif remaining > 0:
        pruned[ties.nonzero().flatten()[:remaining]] = True
    return ~pruned


def _masked_flat_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = scores.detach().flatten().to("cpu", torch.float32)
    if torch.isnan(flat).any():
        raise ValueError("Pruning scores contain NaN; the scoring method or the model weights are broken.")
    if mask is not None:
        # Already-pruned weights sort below every live weight, so they stay pruned.
        flat = flat.masked_fill(~mask.flatten().to("cpu"), float("-inf"))
    return flat


def _global_keep(
    names: list[str], scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None, k: int
) -> dict[str, torch.Tensor]:
    flats = [_masked_flat_scores(scores[n], None if mask is None else mask[n]) for n in names]
    keep = _prune_lowest(torch.cat(flats) if len(flats) > 1 else flats[0], k)
    return dict(zip(names, keep.split([f.numel() for f in flats]), strict=True))


def select_mask(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    mask: Mapping[str, torch.Tensor] | None = None,
    max_tensor_sparsity: float | str | None = None,
    on_tensor_collapse: str = "redistribute",
) -> TicketMask:
    """Keep the highest-scoring weights so that `sparsity` of all scored weights is pruned.

    Args:
        scores (`Mapping[str, torch.Tensor]`): importance per weight (higher = keep).
        sparsity (`float`): fraction in [0, 1) of all scored weights pruned in the result (previously pruned
            ones included). Global scope prunes exactly `round(sparsity * total)` weights; layer scope prunes
            `round(sparsity * numel)` in each tensor.
        scope (`str`): `"global"` (one threshold across tensors) or `"layer"` (the same sparsity per tensor).
        mask (`Mapping`, *optional*): the current mask; its pruned weights stay pruned.
        max_tensor_sparsity (`float` or `"auto"`, *optional*): the most any single tensor may be pruned. Global
            pruning can empty a tensor whose weights are small (layer collapse); `None` disables the guard, `"auto"`
            follows the request (see [`resolve_max_tensor_sparsity`]).
        on_tensor_collapse (`str`): what to do when a tensor would pass `max_tensor_sparsity`: `"redistribute"`
            caps it and prunes the difference elsewhere (global scope), `"warn"` logs a warning and allows it,
            `"error"` raises [`LayerCollapseError`].

    Ties are broken deterministically: among equal scores, the weight that comes first (tensor order, then
    row-major index) is pruned first.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in [0, 1) (e.g. 0.5 prunes half), got {type(sparsity).__name__}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1) (e.g. 0.5 prunes half), got {sparsity}.")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}.")
    if on_tensor_collapse not in COLLAPSE_POLICIES:
        raise ValueError(f"on_tensor_collapse must be one of {COLLAPSE_POLICIES}, got {on_tensor_collapse!r}.")
    guard = max_tensor_sparsity
    max_tensor_sparsity = resolve_max_tensor_sparsity(guard, sparsity)
    names = list(scores)
    for n in names:
        if torch.isnan(scores[n]).any():
            raise ValueError(
                f"Pruning scores of {n!r} contain NaN: the weights (or what the scoring method uses) hold NaN, e.g. "
                "after a diverged training run. Check the model (torch.isnan(param).any()) and lower the learning "
                "rate or fix the data before pruning."
            )
    if mask is not None:
        missing = [n for n in names if n not in mask]
        if missing:
            raise ValueError(f"The current mask has no entry for scored parameter {missing[0]!r}.")
        for n in names:
            if tuple(mask[n].shape) != tuple(scores[n].shape):
                raise ValueError(
                    f"Mask and scores differ in shape for {n!r}: {tuple(mask[n].shape)} vs {tuple(scores[n].shape)}."
                )
    numel = {n: scores[n].numel() for n in names}
    already = {n: 0 if mask is None else int((~mask[n].bool()).sum()) for n in names}
    cap = {
        n: numel[n] if max_tensor_sparsity is None else max(math.floor(max_tensor_sparsity * numel[n]), already[n])
        for n in names
    }

    if scope == "layer":
        target = {n: max(round(sparsity * numel[n]), already[n]) for n in names}
        over = [n for n in names if target[n] > cap[n]]
        if over:
            _collapse(
                over, target, numel, _guard_name(guard, max_tensor_sparsity), on_tensor_collapse, sparsity, False
            )
        keep = {
            n: _prune_lowest(_masked_flat_scores(scores[n], None if mask is None else mask[n]), target[n])
            for n in names
        }
    else:
        total = sum(numel.values())
        k = round(sparsity * total)
        if k < sum(already.values()):
            raise ValueError(
                f"Requested sparsity {sparsity} is below the current mask's "
                f"{sum(already.values()) / total:.4f}; pruned weights stay pruned. Ask for at least that sparsity."
            )
        keep = _global_keep(names, scores, mask, k)
        pruned = {n: numel[n] - int(keep[n].sum()) for n in names}
        over = [n for n in names if pruned[n] > cap[n]]
        if over and on_tensor_collapse != "redistribute":
            _collapse(over, pruned, numel, _guard_name(guard, max_tensor_sparsity), on_tensor_collapse, sparsity, True)
        elif over:
            if k > sum(cap.values()):
                raise LayerCollapseError(
                    f"Cannot reach the requested sparsity {sparsity:.2%} ({k} of {total} weights): "
                    f"{_guard_name(guard, max_tensor_sparsity)} lets the {len(names)} tensors lose at most "
                    f"{sum(cap.values())} weights ({sum(cap.values()) / total:.2%}), each rounded down to whole "
                    "weights; raise max_tensor_sparsity (None disables the guard) or lower the sparsity."
                )
            fixed: dict[str, int] = {}
            pool = list(names)
            # Water-filling: cap the tensors that overflow, re-run the global threshold on the rest.
            while over:
                for n in over:
                    fixed[n] = cap[n]
                    pool.remove(n)
                budget = k - sum(fixed.values())
                keep = _global_keep(pool, scores, mask, budget) if pool else {}
                over = [n for n in pool if numel[n] - int(keep[n].sum()) > cap[n]]
            for n in fixed:
                keep[n] = _prune_lowest(_masked_flat_scores(scores[n], None if mask is None else mask[n]), fixed[n])
            logger.info(
                "Layer-collapse guard: capped %s at max_tensor_sparsity=%s and pruned the rest elsewhere.",
                ", ".join(fixed),
                max_tensor_sparsity,
            )
    return TicketMask({n: keep[n].view(scores[n].shape) for n in names})


def _collapse(
    over: list[str],
    pruned: Mapping[str, int],
    numel: Mapping[str, int],
    guard: str,
    policy: str,
    sparsity: float,
    can_redistribute: bool,
) -> None:
    worst = max(over, key=lambda n: pruned[n] / numel[n])
    message = (
        f"Pruning to the requested sparsity {sparsity:.2%} would remove {pruned[worst] / numel[worst]:.1%} of "
        f"{worst!r} (and {len(over) - 1} more tensors above {guard}); a nearly empty tensor cuts the network "
        "(layer collapse)."
    )
    if policy == "warn":
        logger.warning(message)
        return
    fix = (
        "Use on_tensor_collapse='redistribute', raise max_tensor_sparsity, or exclude the tensor via prune_modules."
        if can_redistribute
        else "Raise max_tensor_sparsity or lower the sparsity."
    )
    raise LayerCollapseError(f"{message} {fix}")
