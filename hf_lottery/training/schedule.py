"""The sparsity schedule of an IMP run: the sparsity of each round, from the start to the target."""

from __future__ import annotations

import math


def sparsity_schedule(target: float, rate: float, rate_of: str = "original", start: float = 0.0) -> list[float]:
    """Round sparsities from `start` to `target`: `rate` of the original (or remaining) weights per round.

    The last round is clipped to `target`.
    """
    levels = [start]
    if rate_of == "original":
        r = math.floor(start / rate + 1e-9) + 1
        while r * rate < target - 1e-9:
            levels.append(r * rate)
            r += 1
    else:
        density = 1.0 - start
        while 1.0 - density * (1.0 - rate) < target - 1e-9:
            density *= 1.0 - rate
            levels.append(1.0 - density)
    if round(target, 10) > round(start, 10):  # levels are kept to 10 decimals: no level twice
        levels.append(target)
    return [round(level, 10) for level in levels]


def at_target(sparsity: float, num_params: int, target: float) -> bool:
    """Whether a mask of `sparsity` over `num_params` weights (or groups) is at `target`: within one weight of it,
    or 1e-6 of the weights on large models.

    A ticket found elsewhere rarely lands on the target exactly (`round(target * n)` weights pruned, per-tensor
    rounding, the layer-collapse guard); it must train as the ticket, not be refused or pruned by a weight more in
    an extra round.
    """
    tolerance = max(1.0 / max(num_params, 1), 1e-6)
    return abs(sparsity - target) <= tolerance + 1e-12
