"""`prune()`: the functional entry point for unstructured pruning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from .masks import TicketMask
from .peft_utils import named_parameters
from .scoring import get_scoring
from .selection import prunable_parameters
from .selector import select_mask

DEFAULT_MAX_TENSOR_SPARSITY = 0.9


def prune(
    model: nn.Module,
    sparsity: float,
    method: str = "magnitude",
    scope: str = "global",
    mask: Mapping[str, torch.Tensor] | None = None,
    *,
    prune_modules: Sequence[str] | str | None = None,
    max_tensor_sparsity: float | None = DEFAULT_MAX_TENSOR_SPARSITY,
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
        scope (`str`): `"global"` (one threshold over all prunable weights) or `"layer"` (each tensor pruned
            to `sparsity`).
        mask (`Mapping[str, torch.Tensor]`, *optional*): the current mask; its pruned weights stay pruned and
            its keys define the prunable set.
        prune_modules (`str` or `list[str]`, *optional*): regexes over parameter names when `mask` is not
            given; `None` = the BERT-Tickets default set (encoder Linears and pooler).
        max_tensor_sparsity (`float`, *optional*, defaults to 0.9): no tensor is pruned beyond this (layer
            collapse guard, see `on_tensor_collapse`); `None` disables it.
        on_tensor_collapse (`str`, defaults to `"redistribute"`): `"redistribute"`, `"warn"` or `"error"`.
        seed (`int`): seed for stochastic methods (random pruning, HYDRA).
        method_kwargs: passed to the scoring method (e.g. `iterations=` for SynFlow, `dataloader=` for HYDRA).
            Every method also receives `seed`, `sparsity`, `scope` and `select` (the selector bound to `scope` and
            the guard), so iterative methods reach their intermediate masks the same way.

    Returns:
        [`TicketMask`]: True = kept.

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
        select_mask, scope=scope, max_tensor_sparsity=max_tensor_sparsity, on_tensor_collapse=on_tensor_collapse
    )
    scoring = get_scoring(method)
    scores = scoring(
        model, parameters, mask, seed=seed, sparsity=sparsity, scope=scope, select=select, **method_kwargs
    )
    return select(scores, sparsity, mask=mask)
