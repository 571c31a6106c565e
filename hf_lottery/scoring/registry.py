"""One registry of scoring methods: a method maps prunable tensors to importance scores (higher = keep)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import torch
from torch import nn

from ..ticket.mask import TicketMask


class ScoringMethod(Protocol):
    """A scoring method.

    Called as `method(model, parameters, mask, **kwargs)` where `parameters` is `{name: parameter}` of the
    prunable tensors and `mask` the current [`TicketMask`] (or `None`). Returns `{name: scores}` with one
    floating-point score per weight, same shapes; higher means more important. The shared selector
    (`hf_lottery.selector`) turns scores into a mask and keeps already-pruned weights pruned, so a method need
    not look at `mask` unless its scores depend on it (SynFlow does).

    [`prune`] also passes `seed`, `sparsity` (the target), `scope` and `select` (the shared selector bound to the
    caller's scope and layer-collapse guard: `select(scores, sparsity, mask=...) -> TicketMask`) to every method;
    iterative methods use `select` for their intermediate masks. A score of `-inf` marks a weight the method
    itself pruned on the way (it stays pruned). Methods must not modify the model.
    """

    def __call__(
        self,
        model: nn.Module,
        parameters: Mapping[str, torch.Tensor],
        mask: Mapping[str, torch.Tensor] | None,
        *,
        seed: int,
        sparsity: float,
        scope: str,
        select: Callable[..., TicketMask],
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class ScoringSpec:
    """A registered scoring method and what a caller (the trainer, the CLI) must know to run it.

    Attributes:
        name (`str`): the registry name (`prune(method=name)`, `LotteryArguments(pruning_method=name)`).
        method (`ScoringMethod`): the function.
        needs_data (`bool`): the method needs `dataloader=` (an iterable of model-ready batches).
        at_init (`bool`): the method chooses the ticket once, from the weights at θ0, at the target sparsity
            (pruning at initialization: SynFlow) rather than from trained weights round after round.
    """

    name: str
    method: ScoringMethod
    needs_data: bool = False
    at_init: bool = False


_SCORING_METHODS: dict[str, ScoringSpec] = {}


def register_scoring(
    name: str, *, needs_data: bool = False, at_init: bool = False
) -> Callable[[ScoringMethod], ScoringMethod]:
    """Decorator registering a scoring method under `name` (used by `prune(method=name)`).

    Args:
        name (`str`): the registry name.
        needs_data (`bool`, *optional*): the method needs `dataloader=` (see [`ScoringSpec`]).
        at_init (`bool`, *optional*): the method prunes once at θ0 (see [`ScoringSpec`]).
    """

    def decorator(fn: ScoringMethod) -> ScoringMethod:
        if name in _SCORING_METHODS:
            raise ValueError(f"A scoring method named {name!r} is already registered.")
        _SCORING_METHODS[name] = ScoringSpec(name, fn, needs_data=needs_data, at_init=at_init)
        return fn

    return decorator


def scoring_spec(name: str) -> ScoringSpec:
    """The [`ScoringSpec`] registered as `name`; `ValueError` listing the registered ones otherwise."""
    try:
        return _SCORING_METHODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown pruning method {name!r}. Registered methods: {', '.join(sorted(_SCORING_METHODS))}."
        ) from None


def get_scoring(name: str) -> ScoringMethod:
    """The scoring method registered as `name`; `ValueError` listing the registered ones otherwise."""
    return scoring_spec(name).method


def scoring_kwargs_from_args(args: Any, method: str | None = None) -> dict[str, Any]:
    """The method's own settings from a `LotteryArguments`: every field named `{method}_{kwarg}`, as `{kwarg: value}`.

    `synflow_iterations=100` becomes `iterations=100` for `method="synflow"`; methods without fields get `{}`.

    Args:
        args (`LotteryArguments`): the arguments (any dataclass).
        method (`str`, *optional*): defaults to `args.pruning_method`.
    """
    method = method if method is not None else args.pruning_method
    scoring_spec(method)
    prefix = f"{method}_"
    return {f.name[len(prefix) :]: getattr(args, f.name) for f in fields(args) if f.name.startswith(prefix)}


def registered_methods() -> list[str]:
    """Names of all registered scoring methods, sorted."""
    return sorted(_SCORING_METHODS)
