"""Turn importance scores into a mask: exact-count top-k, global, per tensor, per output row or N:M, with a guard.

The global threshold is found without concatenating the scores. First, one pass: a strided sample of the scores
brackets the k-th lowest, and the pass keeps what lies above the bracket, counts what lies below it and collects
the scores inside it (a small fraction), whose exact selection settles the rest. When the bracket misses (or
would collect too much), a radix select over the float32 bit patterns decides: two 16-bit histogram passes and one
marking pass, a chunk at a time. Either way the working set is one chunk (and the bracket's scores), the result
one bool per weight, and the mask the same as an exact top-k over the concatenation.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import torch
from transformers.utils import logging

from .ticket.mask import TicketMask
from .types import (
    AUTO_MIN_TENSOR_DENSITY,
    AUTO_RELATIVE_TENSOR_DENSITY,
    AUTO_TENSOR_SPARSITY,
    COLLAPSE_POLICIES,
    WEIGHT_SCOPES,
    is_weight_scope,
    n_m_pattern,
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
    remaining = k - int(torch.count_nonzero(pruned))
    ties = flat_scores == threshold
    n_ties = int(torch.count_nonzero(ties))
    if remaining == n_ties:
        pruned |= ties
    elif remaining > 0:
        pruned[ties.nonzero().flatten()[:remaining]] = True
    return ~pruned


def _has_nan(t: torch.Tensor) -> bool:
    """Whether `t` holds a NaN: one reduction first (a sum is NaN only if a NaN is there or +inf meets -inf), the
    elementwise check only to confirm."""
    return bool(torch.isnan(t.detach().sum())) and bool(torch.isnan(t).any())


def _masked_flat_scores(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    flat = scores.detach().flatten().to("cpu", torch.float32)
    if _has_nan(flat):
        raise ValueError("Pruning scores contain NaN; the scoring method or the model weights are broken.")
    if mask is not None:
        # Already-pruned weights sort below every live weight, so they stay pruned.
        flat = flat.masked_fill(~mask.flatten().to("cpu"), float("-inf"))
    return flat


# Scores converted at a time by the global selection; its working set is about 25 bytes times this.
GLOBAL_SELECTION_CHUNK = 1 << 20
# The strided sample that brackets the global threshold holds one score in GLOBAL_SELECTION_SAMPLE_EVERY, within
# [GLOBAL_SELECTION_SAMPLE_MIN, GLOBAL_SELECTION_SAMPLE_MAX]; the bracket spans BRACKET_WIDTH_STDS standard
# deviations of a sample quantile's rank either side. A miss only costs the radix passes, never a different mask.
GLOBAL_SELECTION_SAMPLE_EVERY = 256
GLOBAL_SELECTION_SAMPLE_MIN = 1 << 18
GLOBAL_SELECTION_SAMPLE_MAX = 1 << 22
BRACKET_WIDTH_STDS = 4.0
# The bracket collects at most max(chunk, this fraction of the scores): 8 bytes each (value, chunk-local index),
# so at most 1/16 byte per weight on top of the chunk's working set.
BRACKET_MAX_FRACTION = 1 / 128


# A float32's order key is an int32 that sorts like the floats: its bits, with all but the sign flipped when
# negative. -0.0 is folded into +0.0 first, as `<` treats them alike.


def _key_to_value(key: int) -> float:
    """The float32 whose order key is `key`."""
    bits = key if key >= 0 else key ^ 0x7FFFFFFF
    return float(torch.tensor([bits], dtype=torch.int32).view(torch.float32).item())


def _high_to_key_order() -> torch.Tensor:
    """Bin `h + 2**15` of a histogram of raw high halves (signed int16 `h`) goes to bin `key_high + 2**15`."""
    raw = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int64)
    return torch.where(raw < 0, raw ^ 0x7FFF, raw) + (1 << 15)


def _score_chunks(
    names: list[str],
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    chunk: int,
    fold_zeros: bool = True,
):
    """`(name, start, values)` over every tensor in order, `chunk` float32 scores at a time, masked weights at -inf
    (they sort first) and, with `fold_zeros` (for bit patterns; comparisons need not), -0.0 folded into +0.0."""
    for n in names:
        flat = scores[n].detach().reshape(-1)
        live = None if mask is None else mask[n].reshape(-1)
        for start in range(0, flat.numel(), chunk):
            window = slice(start, start + chunk)
            yield n, start, _float_scores(flat[window], None if live is None else live[window], fold_zeros)


def _float_scores(values: torch.Tensor, live: torch.Tensor | None, fold_zeros: bool) -> torch.Tensor:
    """`values` as float32 on the CPU with the weights `live` does not keep at -inf; a copy whenever it is changed
    (never the caller's scores), -0.0 folded into +0.0 with `fold_zeros`."""
    part = values.to("cpu", torch.float32)
    if fold_zeros or live is not None:
        part = part + 0.0  # a fresh contiguous copy
    if live is not None:
        part.masked_fill_(~live.to("cpu", torch.bool), float("-inf"))
    return part


def _halves(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The low and high 16-bit halves (int16 views, no copy) of contiguous float32 `values`."""
    halves = values.view(torch.int16)
    return (halves[0::2], halves[1::2]) if sys.byteorder == "little" else (halves[1::2], halves[0::2])


def _kth_key(
    names: list[str], scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None, k: int, chunk: int
) -> tuple[int, int]:
    """The order key of the `k`-th lowest score (1-based) and how many scores lie strictly below it.

    Radix select in two 16-bit digits of the order key: a histogram of the high halves finds the bucket holding the
    k-th key, a histogram of the low halves inside that bucket finds the key. The histograms count the raw halves of
    the float bits (views, no key computed per score) and are put in key order afterwards: a negative float's key
    is its bits with all but the sign flipped, which maps each raw half to one key half.
    """
    raw_high = torch.zeros(1 << 16, dtype=torch.int64)
    for _, _, values in _score_chunks(names, scores, mask, chunk):
        raw_high += torch.bincount(_halves(values)[1].to(torch.int32) + (1 << 15), minlength=1 << 16)
    high = torch.zeros(1 << 16, dtype=torch.int64).index_add_(0, _high_to_key_order(), raw_high)
    cumulative = high.cumsum(0)
    top = int(torch.searchsorted(cumulative, k))
    below = int(cumulative[top - 1]) if top > 0 else 0
    top -= 1 << 15  # the key's signed high half
    raw_top = top if top >= 0 else top ^ 0x7FFF
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for _, _, values in _score_chunks(names, scores, mask, chunk):
        low_half, high_half = _halves(values)
        inside = low_half[high_half == raw_top].to(torch.int32) & 0xFFFF
        low += torch.bincount(inside ^ 0xFFFF if top < 0 else inside, minlength=1 << 16)
    cumulative = low.cumsum(0)
    bottom = int(torch.searchsorted(cumulative, k - below))
    below += int(cumulative[bottom - 1]) if bottom > 0 else 0
    return (top << 16) + bottom, below


def _bracket(
    names: list[str], scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor] | None, k: int, total: int
) -> tuple[float, float]:
    """Scores `(low, high)` that bracket the `k`-th lowest with high probability: quantiles of a strided sample."""
    size = min(max(total // GLOBAL_SELECTION_SAMPLE_EVERY, GLOBAL_SELECTION_SAMPLE_MIN), GLOBAL_SELECTION_SAMPLE_MAX)
    stride = max(1, total // size)
    parts = [
        _float_scores(
            scores[n].detach().reshape(-1)[::stride],
            None if mask is None else mask[n].reshape(-1)[::stride],
            fold_zeros=False,
        )
        for n in names
    ]
    sample = torch.cat(parts).sort().values
    m = sample.numel()
    quantile = k / total
    spread = BRACKET_WIDTH_STDS * math.sqrt(m * quantile * (1.0 - quantile)) + 1.0
    low_index, high_index = math.floor(quantile * m - spread), math.ceil(quantile * m + spread)
    low = float(sample[low_index]) if low_index >= 0 else -math.inf
    high = float(sample[high_index]) if high_index < m else math.inf
    return low, high


def _bracketed_keep(
    names: list[str],
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    k: int,
    chunk: int,
    numel: Mapping[str, int],
) -> dict[str, torch.Tensor] | None:
    """`_global_keep` in one pass over the scores when a sampled bracket holds the `k`-th lowest, else `None`."""
    total = sum(numel.values())
    low, high = _bracket(names, scores, mask, k, total)
    limit = max(chunk, int(total * BRACKET_MAX_FRACTION))
    keep = {n: torch.empty(numel[n], dtype=torch.bool) for n in names}
    # One buffer each for the scores inside the bracket and their chunk-local places (pages are only resident
    # once written): many small tensors kept across chunks would fragment the heap the chunks reuse.
    inside_values = torch.empty(limit, dtype=torch.float32)
    inside_places = torch.empty(limit, dtype=torch.int32)
    segments = []  # (name, start of the chunk, how many of the buffers' entries are its)
    below, collected = 0, 0
    for n, start, values in _score_chunks(names, scores, mask, chunk, fold_zeros=False):
        above = values > high
        keep[n][start : start + values.numel()] = above
        under = values < low
        below += int(torch.count_nonzero(under))  # far faster than a bool sum
        inside = under.logical_or_(above).logical_not_()
        count = int(torch.count_nonzero(inside))
        if collected + count > limit:
            return None
        if count:
            places = inside.nonzero().flatten()
            inside_values[collected : collected + count] = values[places]
            inside_places[collected : collected + count] = places
            segments.append((n, start, count))
            collected += count
    if not 0 <= k - below <= collected:
        return None
    # The scores inside the bracket, in tensor-then-index order: ties go the way the whole selection breaks them.
    inside_keep = _prune_lowest(inside_values[:collected], k - below)
    offset = 0
    for n, start, count in segments:
        keep[n][start + inside_places[offset : offset + count].long()] = inside_keep[offset : offset + count]
        offset += count
    return keep


def _global_keep(
    names: list[str],
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    k: int,
    chunk: int | None = None,
    bracket: bool = True,
) -> dict[str, torch.Tensor]:
    """Flat `keep` vectors pruning exactly the `k` lowest scores over all `names`; ties go by tensor, then index.

    The same result as `_prune_lowest` on the concatenated scores, without concatenating them: in one pass when
    the sampled bracket holds the threshold (`bracket=False` goes straight to the radix select).
    """
    chunk = chunk or GLOBAL_SELECTION_CHUNK
    numel = {n: scores[n].numel() for n in names}
    total = sum(numel.values())
    if k <= 0 or k >= total:
        return {n: torch.full((numel[n],), k <= 0, dtype=torch.bool) for n in names}
    if bracket:
        found = _bracketed_keep(names, scores, mask, k, chunk, numel)
        if found is not None:
            return found
    key, below = _kth_key(names, scores, mask, k, chunk)
    threshold = _key_to_value(key)  # float comparisons order like the keys (-0.0 == +0.0, -inf first)
    remaining = k - below  # ties at the threshold still to prune, lowest index first
    keep = {n: torch.empty(numel[n], dtype=torch.bool) for n in names}
    for n, start, values in _score_chunks(names, scores, mask, chunk):
        kept = values >= threshold
        if remaining > 0:
            ties = (values == threshold).nonzero().flatten()[:remaining]
            kept[ties] = False
            remaining -= ties.numel()
        keep[n][start : start + values.numel()] = kept
    return keep


def _rows(t: torch.Tensor, output_dim: int) -> torch.Tensor:
    """`t` as `[outputs, fan_in]`: row r holds the weights feeding output r, row-major (a 1-D tensor is one row)."""
    if t.dim() < 2:
        return t.reshape(1, -1)
    return t.movedim(output_dim, 0).reshape(t.shape[output_dim], -1)


def _from_rows(rows: torch.Tensor, shape: torch.Size, output_dim: int) -> torch.Tensor:
    if len(shape) < 2:
        return rows.reshape(shape)
    moved = list(shape)
    moved.insert(0, moved.pop(output_dim))
    return rows.reshape(moved).movedim(0, output_dim).contiguous()


def _ranks(rows: torch.Tensor) -> torch.Tensor:
    """Rank of each score within its row, lowest first; equal scores ranked by index (stable sort)."""
    order = rows.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(rows.shape[1]).expand_as(order).contiguous())
    return ranks


def _row_targets(live_rows: torch.Tensor | None, shape: torch.Size, sparsity: float) -> torch.Tensor:
    """Weights pruned per output row: `round(sparsity * fan_in)`, or more where the current mask pruned more."""
    target = torch.full((shape[0],), round(sparsity * shape[1]), dtype=torch.int64)
    if live_rows is not None:
        target = torch.maximum(target, (~live_rows).sum(1))
    return target


def _n_m_candidates(name: str, rows: torch.Tensor, live_rows: torch.Tensor | None, n: int, m: int) -> torch.Tensor:
    """The `m - n` lowest scores of every `m` consecutive weights of a row: the ones an exact N:M mask prunes."""
    if rows.shape[1] % m:
        raise ValueError(
            f"scope='{n}:{m}' groups {m} consecutive weights along the input dimension, but {name!r} has "
            f"{rows.shape[1]} inputs per output, not a multiple of {m}; exclude it (prune_modules) or use another M."
        )
    if live_rows is not None and int((~live_rows).reshape(-1, m).sum(1).max()) > m - n:
        raise ValueError(
            f"The current mask prunes more than {m - n} of some {m} consecutive weights of {name!r}, so no "
            f"{n}:{m} mask can keep its pruned weights pruned; start the N:M ticket from a dense or N:M mask."
        )
    return (_ranks(rows.reshape(-1, m)) < m - n).reshape(rows.shape)


def _per_tensor_keep(
    name: str,
    scores: torch.Tensor,
    mask: torch.Tensor | None,
    scope: str,
    sparsity: float,
    k: int,
    output_dim: int,
) -> torch.Tensor:
    """The keep mask of one tensor under a per-tensor scope ("layer", "row", "N:M"), `k` pruned where it counts."""
    flat = _masked_flat_scores(scores, mask)
    if scope == "layer":
        return _prune_lowest(flat, k).view(scores.shape)
    rows = _rows(flat.view(scores.shape), output_dim)
    live_rows = None if mask is None else _rows(mask.to("cpu", torch.bool), output_dim)
    pattern = n_m_pattern(scope)
    if pattern is None:  # "row"
        keep = _ranks(rows) >= _row_targets(live_rows, rows.shape, sparsity).unsqueeze(1)
    else:
        candidates = _n_m_candidates(name, rows, live_rows, *pattern)
        # Below 1 - N/M (IMP's early rounds) only the lowest candidates go, so every later round nests.
        keep = ~candidates
        keep[candidates] = _prune_lowest(rows[candidates], k)
    return _from_rows(keep, scores.shape, output_dim)


def _per_tensor_targets(
    names: list[str],
    scores: Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None,
    scope: str,
    sparsity: float,
    already: Mapping[str, int],
    output_dims: Mapping[str, int],
) -> dict[str, int]:
    """Weights pruned per tensor under a per-tensor scope (row scope: the sum over its rows)."""
    if scope != "row":
        return {n: max(round(sparsity * scores[n].numel()), already[n]) for n in names}
    targets = {}
    for n in names:
        live = None if mask is None else _rows(mask[n].to("cpu", torch.bool), output_dims.get(n, 0))
        shape = _rows(scores[n], output_dims.get(n, 0)).shape
        targets[n] = int(_row_targets(live, shape, sparsity).sum())
    return targets


def select_mask(
    scores: Mapping[str, torch.Tensor],
    sparsity: float,
    scope: str = "global",
    mask: Mapping[str, torch.Tensor] | None = None,
    max_tensor_sparsity: float | str | None = None,
    on_tensor_collapse: str = "redistribute",
    output_dims: Mapping[str, int] | None = None,
) -> TicketMask:
    """Keep the highest-scoring weights so that `sparsity` of all scored weights is pruned.

    Args:
        scores (`Mapping[str, torch.Tensor]`): importance per weight (higher = keep).
        sparsity (`float`): fraction in [0, 1) of all scored weights pruned in the result (previously pruned
            ones included). Global scope prunes exactly `round(sparsity * total)` weights; layer scope prunes
            `round(sparsity * numel)` in each tensor.
        scope (`str`): `"global"` (one threshold across tensors), `"layer"` (the same sparsity per tensor), `"row"`
            (the same sparsity among the weights feeding each output: `round(sparsity * fan_in)` per output, Wanda's
            comparison groups) or `"N:M"` such as `"2:4"` (exactly N kept of every M consecutive weights along the
            input dimension at `sparsity = 1 - N/M`; below that, each tensor prunes `round(sparsity * numel)` of
            the weights that N:M would prune, lowest first, so IMP rounds nest and end on an exact N:M mask).
        mask (`Mapping`, *optional*): the current mask; its pruned weights stay pruned.
        max_tensor_sparsity (`float` or `"auto"`, *optional*): the most any single tensor may be pruned. Global
            pruning can empty a tensor whose weights are small (layer collapse); `None` disables the guard, `"auto"`
            follows the request (see [`resolve_max_tensor_sparsity`]).
        on_tensor_collapse (`str`): what to do when a tensor would pass `max_tensor_sparsity`: `"redistribute"`
            caps it and prunes the difference elsewhere (global scope), `"warn"` logs a warning and allows it,
            `"error"` raises [`LayerCollapseError`].
        output_dims (`Mapping[str, int]`, *optional*): for `"row"` and `"N:M"`, the dimension of each tensor that
            indexes the layer's outputs (default 0, as `nn.Linear`; 1 for transformers' `Conv1D`, GPT-2). The
            other dimensions, flattened row-major, are the input dimension.

    Ties are broken deterministically: among equal scores, the weight that comes first (tensor order, then
    row-major index) is pruned first.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"sparsity must be a float in [0, 1) (e.g. 0.5 prunes half), got {type(sparsity).__name__}.")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1) (e.g. 0.5 prunes half), got {sparsity}.")
    if not is_weight_scope(scope):
        raise ValueError(f"scope must be one of {WEIGHT_SCOPES} or 'N:M' with 1 <= N < M (e.g. '2:4'), got {scope!r}.")
    pattern = n_m_pattern(scope)
    if pattern is not None and sparsity > 1 - pattern[0] / pattern[1] + 1e-12:
        raise ValueError(
            f"scope={scope!r} keeps {pattern[0]} of every {pattern[1]} weights: sparsity can be at most "
            f"{1 - pattern[0] / pattern[1]}, got {sparsity}."
        )
    if on_tensor_collapse not in COLLAPSE_POLICIES:
        raise ValueError(f"on_tensor_collapse must be one of {COLLAPSE_POLICIES}, got {on_tensor_collapse!r}.")
    guard = max_tensor_sparsity
    max_tensor_sparsity = resolve_max_tensor_sparsity(guard, sparsity)
    names = list(scores)
    for n in names:
        if _has_nan(scores[n]):
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
    already = {n: 0 if mask is None else numel[n] - int(torch.count_nonzero(mask[n])) for n in names}
    cap = {
        n: numel[n] if max_tensor_sparsity is None else max(math.floor(max_tensor_sparsity * numel[n]), already[n])
        for n in names
    }

    if scope != "global":
        output_dims = output_dims or {}
        target = _per_tensor_targets(names, scores, mask, scope, sparsity, already, output_dims)
        over = [n for n in names if target[n] > cap[n]]
        if over:
            _collapse(
                over, target, numel, _guard_name(guard, max_tensor_sparsity), on_tensor_collapse, sparsity, False
            )
        keep = {
            n: _per_tensor_keep(
                n, scores[n], None if mask is None else mask[n], scope, sparsity, target[n], output_dims.get(n, 0)
            )
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
        pruned = {n: numel[n] - int(torch.count_nonzero(keep[n])) for n in names}
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
                over = [n for n in pool if numel[n] - int(torch.count_nonzero(keep[n])) > cap[n]]
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
