"""One registry of scoring methods: a method maps prunable tensors to importance scores (higher = keep)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn


class ScoringMethod(Protocol):
    """A scoring method.

    Called as `method(model, parameters, mask, **kwargs)` where `parameters` is `{name: parameter}` of the
    prunable tensors and `mask` the current [`TicketMask`] (or `None`). Returns `{name: scores}` with one
    floating-point score per weight, same shapes; higher means more important. The shared selector
    (`hf_lottery.selector`) turns scores into a mask and keeps already-pruned weights pruned, so a method need
    not look at `mask` unless its scores depend on it (SynFlow does).
    """

    def __call__(
        self,
        model: nn.Module,
        parameters: Mapping[str, torch.Tensor],
        mask: Mapping[str, torch.Tensor] | None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]: ...


_SCORING_METHODS: dict[str, ScoringMethod] = {}


def register_scoring(name: str) -> Callable[[ScoringMethod], ScoringMethod]:
    """Decorator registering a scoring method under `name` (used by `prune(method=name)`)."""

    def decorator(fn: ScoringMethod) -> ScoringMethod:
        if name in _SCORING_METHODS:
            raise ValueError(f"A scoring method named {name!r} is already registered.")
        _SCORING_METHODS[name] = fn
        return fn

    return decorator


def get_scoring(name: str) -> ScoringMethod:
    """The scoring method registered as `name`; `ValueError` listing the registered ones otherwise."""
    try:
        return _SCORING_METHODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown pruning method {name!r}. Registered methods: {', '.join(sorted(_SCORING_METHODS))}."
        ) from None


def registered_methods() -> list[str]:
    """Names of all registered scoring methods, sorted."""
    return sorted(_SCORING_METHODS)
