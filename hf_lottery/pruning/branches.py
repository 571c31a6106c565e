"""Controls for a ticket (open_lth's branches): random pruning, random re-initialization, transfer to another task.

A lottery claim is the comparison of a ticket with its controls at the same sparsity:

- [`random_pruning_like`]: the ticket's per-tensor sparsity, random positions (open_lth `randomly_prune`,
  layerwise strategy). Is the *choice* of weights what matters?
- [`reinitialize_survivors`]: the ticket's positions, fresh random values (open_lth `randomly_reinitialize`; here
  only the ticket's tensors are re-drawn, so a pre-trained encoder keeps its embeddings, LayerNorms and biases, as
  in Chen et al.'s control). Do the *values* at θ0 matter?
- [`transfer_ticket`]: a ticket found on task A applied to a model for task B (a new head). Does the ticket
  carry over?

Each returns the mask to train with (the trainer keeps it enforced); train it like the ticket itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers.utils import logging

from ..ticket.mask import TicketMask
from ..utils.parameters import default_prunable_names

logger = logging.get_logger(__name__)

RANDOM_PRUNING_STRATEGIES = ("layerwise", "global")

__all__ = ["random_pruning_like", "reinitialize_survivors", "transfer_ticket"]


def _branch_metadata(ticket: TicketMask, **branch: object) -> dict:
    return {**copy.deepcopy(ticket.metadata), "branch": dict(branch)}


def random_pruning_like(
    ticket: TicketMask, model: nn.Module, seed: int = 0, strategy: str = "layerwise"
) -> TicketMask:
    """A random mask with the ticket's sparsity: the random-pruning control.

    Args:
        ticket ([`TicketMask`]): the ticket to imitate.
        model (`nn.Module`): the model the control will be trained on (checked against the ticket).
        seed (`int`, *optional*, defaults to 0): seed of the random positions (the global RNG is untouched).
        strategy (`str`, *optional*, defaults to `"layerwise"`): `"layerwise"` keeps exactly as many weights in each
            tensor as the ticket does (open_lth's default); `"global"` only the same total, spread at random.

    Returns:
        [`TicketMask`]: the control mask (metadata: the ticket's plus `branch`).

    Example:
        ```python
        >>> control = random_pruning_like(ticket, model, seed=1)
        >>> control.apply_(model)
        ```
    """
    if strategy not in RANDOM_PRUNING_STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not valid; accepted values: {RANDOM_PRUNING_STRATEGIES}.")
    ticket.validate(model)
    generator = torch.Generator().manual_seed(seed)
    if strategy == "layerwise":
        masks = {
            name: m.flatten()[torch.randperm(m.numel(), generator=generator)].view(m.shape)
            for name, m in ticket.items()
        }
    else:
        flat = torch.cat([m.flatten() for m in ticket.values()])
        flat = flat[torch.randperm(flat.numel(), generator=generator)]
        masks = {
            name: chunk.view(m.shape)
            for (name, m), chunk in zip(ticket.items(), flat.split([m.numel() for m in ticket.values()]), strict=True)
        }
    return TicketMask(masks, _branch_metadata(ticket, name="random_prune", seed=seed, strategy=strategy))


@torch.no_grad()
def reinitialize_survivors(model: nn.Module, ticket: TicketMask, seed: int = 0) -> nn.Module:
    """Re-draw the ticket's surviving weights at random, in place: the random re-initialization control.

    The new values come from the model's own initialization (`_init_weights`, i.e. `config.initializer_range` for
    BERT-family models) on a fresh copy built from `model.config` under `seed`; the tensors the ticket covers are
    overwritten with them and masked. Everything else (embeddings, LayerNorms, biases, the head) is left as is.

    Args:
        model (`nn.Module`): a transformers model, modified in place (briefly needs memory for a fresh copy).
        ticket ([`TicketMask`]): the ticket; its pruned weights are zeroed.
        seed (`int`, *optional*, defaults to 0): seed of the fresh initialization (the global RNG is restored).

    Returns:
        `nn.Module`: `model`.

    Example:
        ```python
        >>> model = reinitialize_survivors(model, ticket, seed=1)  # then train with `ticket` enforced
        ```
    """
    ticket.validate(model)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"reinitialize_survivors needs a transformers model with a config, got {type(model).__name__}."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            fresh = type(model)(copy.deepcopy(config))
        except Exception as err:
            raise ValueError(
                f"Could not build a fresh {type(model).__name__} from its config to draw new weights ({err})."
            ) from err
    fresh_params = dict(fresh.named_parameters())
    params = dict(model.named_parameters())
    for name, mask in ticket.items():
        param = params[name]
        value = fresh_params[name].to(device=param.device, dtype=param.dtype)
        param.copy_(value * mask.to(device=param.device, dtype=param.dtype))
    return model


def _resolve_names(ticket: TicketMask, model: nn.Module) -> dict[str, str]:
    """Map the ticket's names onto `model`'s, across a base model prefix (`bert.encoder...` vs `encoder...`)."""
    params = dict(model.named_parameters())
    prefix = getattr(model, "base_model_prefix", "")
    mapping = {}
    for name in ticket:
        candidates = [name]
        if prefix:
            candidates.append(f"{prefix}.{name}")
        head, _, rest = name.partition(".")
        if rest:
            candidates.append(rest)
            if prefix:
                candidates.append(f"{prefix}.{rest}")
        mapping[name] = next((c for c in candidates if c in params), name)
    return mapping


def transfer_ticket(ticket: TicketMask, model_b: nn.Module) -> TicketMask:
    """Apply a ticket found on one task to a model for another task (same encoder, a new head), in place.

    The ticket must cover only the shared encoder: the head is task-specific and never in a ticket. Names are matched
    across a base-model prefix (a ticket from `BertForSequenceClassification` fits a `BertModel` and vice versa);
    every masked tensor must exist in `model_b` with the same shape, else a `ValueError` names the first that does
    not. Tensors that `model_b` would prune by default but the ticket does not cover stay dense (with a warning).

    Args:
        ticket ([`TicketMask`]): the ticket found on task A.
        model_b (`nn.Module`): the model for task B, typically the same base checkpoint with a new head; its pruned
            weights are zeroed.

    Returns:
        [`TicketMask`]: the ticket under `model_b`'s parameter names, to train with (metadata: `branch`).

    Example:
        ```python
        >>> ticket = TicketMask.from_pretrained("out/sst2-ticket/ticket")
        >>> model_b = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
        >>> mask = transfer_ticket(ticket, model_b)  # then LotteryTrainer(model=model_b, mask=mask, ...)
        ```
    """
    mapping = _resolve_names(ticket, model_b)
    prefix = getattr(model_b, "base_model_prefix", "")
    has_base = bool(prefix) and isinstance(getattr(model_b, prefix, None), nn.Module)
    if has_base:
        params = dict(model_b.named_parameters())
        in_head = [new for new in mapping.values() if new in params and not new.startswith(f"{prefix}.")]
        if in_head:
            raise ValueError(
                f"The ticket masks {in_head[0]!r}, which belongs to {type(model_b).__name__}'s task head; a ticket can "
                "only carry over the shared encoder. Drop the head from the ticket (heads are never pruned by default)."
            )
    transferred = TicketMask(
        {mapping[name]: m for name, m in ticket.items()}, _branch_metadata(ticket, name="transfer")
    )
    transferred.validate(model_b)
    uncovered = [n for n in default_prunable_names(model_b) if n not in transferred]
    if uncovered:
        logger.warning(
            "The transferred ticket does not cover %d of %s's default prunable tensors (first: %s); they stay dense.",
            len(uncovered),
            type(model_b).__name__,
            uncovered[0],
        )
    transferred.apply_(model_b)
    return transferred
