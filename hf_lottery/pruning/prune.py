"""`prune()`: the functional entry point for unstructured pruning."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, cast

import torch
from torch import nn

from ..scoring import get_scoring, scoring_kwargs_from_args, scoring_spec
from ..selector import LayerCollapseError, select_mask
from ..ticket.config import TicketConfig
from ..ticket.mask import TicketMask
from ..types import DEFAULT_MAX_TENSOR_SPARSITY
from ..utils.parameters import is_peft_model, named_parameters, output_dims, prunable_parameters


def prune(
    model: nn.Module,
    sparsity: float,
    method: str = "magnitude",
    scope: str = "global",
    mask: Mapping[str, torch.Tensor] | None = None,
    *,
    prune_modules: Sequence[str] | str | None = None,
    max_tensor_sparsity: float | str | None = DEFAULT_MAX_TENSOR_SPARSITY,
    on_tensor_collapse: str = "redistribute",
    seed: int = 0,
    **method_kwargs: Any,
) -> TicketMask:
    """Compute a pruning mask for `model`. The model is not modified (call `mask.apply_(model)` for that).

    Args:
        model (`nn.Module`): the model whose weights are scored.
        sparsity (`float`): fraction in [0, 1) of all prunable weights removed in the returned mask, weights
            already pruned in `mask` included.
        method (`str`): a registered scoring method (`hf_lottery.scoring.registered_methods()`), e.g.
            `"magnitude"`, `"random"`, `"synflow"` or `"hydra"`.
        scope (`str`): `"global"` (one threshold over all prunable weights), `"layer"` (each tensor pruned to
            `sparsity`), `"row"` (the weights feeding each output pruned to `sparsity`, Wanda's groups) or `"N:M"`
            such as `"2:4"` (N kept of every M consecutive weights along the input dimension; `sparsity` at most
            `1 - N/M`, reached exactly there). See [`select_mask`].
        mask (`Mapping[str, torch.Tensor]`, *optional*): the current mask; its pruned weights stay pruned and
            its keys define the prunable set.
        prune_modules (`str` or `list[str]`, *optional*): regexes over parameter names when `mask` is not
            given; `None` = the BERT-Tickets default set (encoder Linears and pooler).
        max_tensor_sparsity (`float` or `"auto"`, *optional*, defaults to `"auto"`): no tensor is pruned beyond
            this (layer-collapse guard, see `on_tensor_collapse`); `None` disables it. `"auto"` keeps every tensor
            at a density of at least `min(10%, half the overall density)`: a 0.9 cap up to 80 % sparsity, 0.975
            at 95 %, 0.995 at 99 % (see [`~hf_lottery.selector.resolve_max_tensor_sparsity`]).
        on_tensor_collapse (`str`, defaults to `"redistribute"`): `"redistribute"`, `"warn"` or `"error"`.
        seed (`int`): seed for stochastic methods (random pruning, HYDRA).
        method_kwargs: passed to the scoring method (e.g. `iterations=` for SynFlow, `dataloader=` for HYDRA).
            Every method also receives `seed`, `sparsity`, `scope` and `select` (the selector bound to `scope` and
            the guard), so iterative methods reach their intermediate masks the same way.

    Returns:
        [`TicketMask`]: True = kept. Its metadata records the base model (`name_or_path`), the architecture and
        the fingerprint of the weights scored (a given `mask` passes its own metadata on), so a saved mask
        rebuilds θ0 ⊙ m with `TicketMask.from_pretrained(folder).load_model(AutoModel...)`.

    Example:
        ```python
        >>> mask = prune(model, sparsity=0.5)
        >>> mask.apply_(model)
        ```
    """
    if mask is not None:
        mask = mask if isinstance(mask, TicketMask) else TicketMask(mask)
        mask.validate(model)
        # Model order, not the mask's: tie-breaking follows tensor order.
        parameters = {name: p for name, p in named_parameters(model).items() if name in mask}
    else:
        parameters = prunable_parameters(model, prune_modules)
    select = partial(
        select_mask,
        scope=scope,
        max_tensor_sparsity=max_tensor_sparsity,
        on_tensor_collapse=on_tensor_collapse,
        output_dims=output_dims(model, list(parameters)),
    )
    scoring = get_scoring(method)
    try:
        scores = scoring(
            model, parameters, mask, seed=seed, sparsity=sparsity, scope=scope, select=select, **method_kwargs
        )
    except LayerCollapseError as err:
        # Iterative methods select intermediate masks on their way: name the request the user made as well.
        raise LayerCollapseError(
            f"prune(sparsity={sparsity}, method={method!r}) stopped at an intermediate step: {err}"
        ) from err
    selected = select(scores, sparsity, mask=mask)
    del scores  # as large as the prunable weights: gone before the fingerprint's float32 copies are made
    if mask is not None:  # pruning further: the given mask says what the ticket was found on
        return selected.with_metadata(mask.metadata)
    # What load_model needs to rebuild θ0 ⊙ m: the base model, its architecture and the fingerprint of the
    # weights the mask was found on (the model's current ones).
    base = cast(Any, model).get_base_model() if is_peft_model(model) else model
    described = TicketConfig.from_model(base, selected, weights=named_parameters(model))  # original names
    return selected.with_metadata(described.to_dict(), pruning_method=method)


def pruning_seed(args: Any, index: int) -> int:
    """Seed of a stochastic pruning step: `pruning_seed` (default `seed`) of the arguments plus the round index."""
    return (args.pruning_seed if args.pruning_seed is not None else args.seed) + index


def prune_with_arguments(
    model: nn.Module,
    args: Any,
    sparsity: float,
    mask: Mapping[str, torch.Tensor] | None,
    index: int,
    dataloader: Callable[[], Iterable[Any]] | None = None,
) -> TicketMask:
    """`prune()` configured by a `LotteryArguments` (method, scope, guard, the method's own `{method}_*` fields).

    Args:
        index (`int`): the round (or pruning level); stochastic methods are seeded with `pruning_seed + index`.
        dataloader (`Callable`, *optional*): builds the training batches, called only for methods that need data.
    """
    method_kwargs = scoring_kwargs_from_args(args)
    if scoring_spec(args.pruning_method).needs_data:
        method_kwargs["dataloader"] = dataloader() if dataloader is not None else None
    return prune(
        model,
        sparsity,
        method=args.pruning_method,
        scope=args.pruning_scope,
        mask=mask,
        max_tensor_sparsity=args.max_tensor_sparsity,
        on_tensor_collapse=args.on_tensor_collapse,
        seed=pruning_seed(args, index),
        **method_kwargs,
    )
