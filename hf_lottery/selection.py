"""Which parameters are prunable: the BERT-Tickets set by default, or user regexes."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn

from .peft_utils import named_parameters, original_names

# Parts of the base model that are never pruned by default (ELECTRA's `embeddings_project` is a Linear).
_DEFAULT_EXCLUDED = re.compile(r"(^|\.)embeddings(\.|_|$)")


def _base_model_prefix(model: nn.Module) -> str | None:
    prefix = getattr(model, "base_model_prefix", None)
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return prefix
    return None


def default_prunable_names(model: nn.Module) -> list[str]:
    """Names of the default prunable parameters (as BERT-Tickets).

    The weight matrix of every `nn.Linear` inside the base model (the encoder's Q, K, V, attention output,
    intermediate and output projections, and the pooler). Never embeddings, LayerNorm, biases or the task head:
    the head lives outside `model.base_model_prefix`, and for a bare encoder every Linear counts.
    """
    prefix = _base_model_prefix(model)
    root = getattr(model, prefix) if prefix else model
    names = []
    for module_name, module in root.named_modules():
        if isinstance(module, nn.Linear) and not _DEFAULT_EXCLUDED.search(module_name):
            full = f"{prefix}.{module_name}" if prefix else module_name
            names.append(f"{full}.weight")
    return original_names(model, names)  # under peft: `...query.base_layer.weight` -> `...query.weight`


def prunable_parameters(model: nn.Module, prune_modules: Sequence[str] | str | None = None) -> dict[str, nn.Parameter]:
    """The parameters to prune, `{name: parameter}` in the model's own order.

    Args:
        model (`nn.Module`): the model.
        prune_modules (`str` or `list[str]`, *optional*):
            Regular expressions over parameter names; a parameter is prunable when any of them matches its full
            name (`re.fullmatch`). `None` selects the default set of [`default_prunable_names`].

    Raises:
        `ValueError`: when nothing is selected, or a regex is invalid.
    """
    params = named_parameters(model)  # original names, also under peft
    if prune_modules is None:
        wanted = set(default_prunable_names(model))
    else:
        patterns = [prune_modules] if isinstance(prune_modules, str) else list(prune_modules)
        compiled = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern))
            except re.error as err:
                raise ValueError(f"prune_modules: invalid regular expression {pattern!r} ({err}).") from err
        wanted = {name for name in params if any(c.fullmatch(name) for c in compiled)}
    selected = {name: p for name, p in params.items() if name in wanted and p.is_floating_point()}
    if not selected:
        what = "the default set (nn.Linear weights of the base model)" if prune_modules is None else prune_modules
        raise ValueError(
            f"No prunable parameters found in {type(model).__name__} for {what}. Pass `prune_modules` with regular "
            "expressions that match parameter names, e.g. [r'.*encoder.*\\.weight']."
        )
    return selected
