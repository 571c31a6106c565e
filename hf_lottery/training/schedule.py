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
    if target > start + 1e-12:
        levels.append(target)
    return [round(level, 10) for level in levels]
