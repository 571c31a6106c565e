"""Sparse model folders: a standard `save_pretrained` checkpoint with the pruned weights zero and the ticket
files beside the weights, and the base model a ticket is loaded onto."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers.utils import logging

from ..constants import SPARSITY_PLOT_NAME, TICKET_CONFIG_NAME
from ..utils.io import commit_folder, staging_folder
from ..utils.parameters import check_mask_fits
from .config import SAFE_MODEL_KWARGS, TicketConfig, split_model_kwargs
from .figures import mask_figures
from .fingerprint import tensor_digests
from .folder import write_ticket_files

logger = logging.get_logger(__name__)

# The weight files `save_pretrained` writes (one file, or numbered shards and their index); stale ones are removed
# when a sparse model is saved over another. Nothing else is: `model.orig.safetensors` may be the user's backup.
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$")


def save_sparse_model(
    model: nn.Module,
    mask: Mapping[str, torch.Tensor],
    save_directory: str | os.PathLike,
    *,
    is_main_process: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
    create_card: bool = True,
    **save_pretrained_kwargs: Any,
) -> Path:
    """Save `model` as a standard checkpoint with the pruned weights zeroed, plus the ticket files beside it.

    `AutoModel*.from_pretrained(save_directory)` loads it anywhere, hf_lottery installed or not, and
    [`TicketMask.from_model_folder`] finds the mask again. The model itself is not modified: the zeros are baked
    into the saved state dict only.

    Args:
        model ([`~transformers.PreTrainedModel`]): the model to save.
        mask (`TicketMask` or `Mapping[str, torch.Tensor]`): the mask (True = kept); its metadata becomes the
            ticket config.
        save_directory (`str` or `os.PathLike`): the folder (created, or updated in place: other files stay).
        is_main_process (`bool`, *optional*, defaults to `True`): only the main process writes.
        state_dict (`dict`, *optional*): the state dict to save (as `save_pretrained`'s); default
            `model.state_dict()`.
        create_card (`bool`, *optional*, defaults to `True`): write the ticket card as `README.md`.
        save_pretrained_kwargs: passed to `model.save_pretrained` (e.g. `max_shard_size`).

    Returns:
        `Path`: the folder.

    Example:
        ```python
        >>> save_sparse_model(model, trainer.ticket, "out/sparse")
        >>> AutoModelForSequenceClassification.from_pretrained("out/sparse")  # no hf_lottery needed
        ```
    """
    metadata = getattr(mask, "metadata", {})
    inner = getattr(model, "module", model)
    check_mask_fits(mask, inner)
    target = Path(save_directory)
    if not is_main_process:
        return target
    state = dict(state_dict if state_dict is not None else inner.state_dict())
    aliases = _aliases(state)
    for name, m in mask.items():
        if name not in state:
            raise ValueError(f"The state dict to save has no entry {name!r}, which the ticket masks.")
        for alias in aliases.get(name, [name]):  # tied weights: one mask for every name of the tensor
            tensor = state[alias]
            state[alias] = tensor.masked_fill(~m.to(tensor.device), 0)  # +0.0, where tensor * mask gives -0.0
    with staging_folder(target) as staging:
        cast(Any, inner).save_pretrained(staging, state_dict=state, **save_pretrained_kwargs)
        write_ticket_files(mask, metadata, staging, repo_id=None, create_card=create_card, has_weights=True)
        written = {p.name for p in staging.iterdir()}
        stale = [p.name for p in target.iterdir() if _WEIGHT_FILE.match(p.name)] if target.is_dir() else []
        remove = [SPARSITY_PLOT_NAME] + [name for name in stale if name not in written]
        commit_folder(staging, target, remove=remove, last=TICKET_CONFIG_NAME)
    sparsity = mask_figures(mask)["__total__"]["sparsity"]
    logger.info("Sparse model saved in %s (sparsity %.2f%% of the masked weights).", target, 100 * sparsity)
    return target


def _aliases(state: Mapping[str, torch.Tensor]) -> dict[str, list[str]]:
    """For each entry of `state`, every name under which the same tensor appears (tied weights)."""
    groups: dict[tuple, list[str]] = {}
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta" and tensor.numel():
            key = (
                tensor.device,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tensor.shape,
                tensor.stride(),
            )
            groups.setdefault(key, []).append(name)
    return {name: names for names in groups.values() for name in names}


def load_base_model(
    config: TicketConfig,
    model_class: Any,
    base: str | os.PathLike | nn.Module | None = None,
    **from_pretrained_kwargs: Any,
) -> nn.Module:
    """The base model a ticket masks: `base` itself if it is a model, else `model_class.from_pretrained` of `base`
    or of the recorded base (at the recorded revision), with the recorded `model_kwargs` as defaults.

    A ticket is untrusted input: of its `model_kwargs` only the allow-listed ones (`SAFE_MODEL_KWARGS`: the task
    head's `num_labels`, labels, `problem_type`, `dtype`) are passed. Any other key (`trust_remote_code`,
    `device_map`, paths...) must be given by the caller, whose value is then used.

    Raises:
        `ValueError`: the ticket asks for a `from_pretrained` argument outside the allow-list that the caller did
        not pass.
    """
    if isinstance(base, nn.Module):
        return base
    path = base if base is not None else config.base_model_name_or_path
    if not path:
        raise ValueError("The ticket does not record its base model; pass `base=` (a Hub id or a local folder).")
    if base is None and config.revision and "revision" not in from_pretrained_kwargs:
        from_pretrained_kwargs["revision"] = config.revision
    safe, refused = split_model_kwargs(config.model_kwargs)
    refused = {k: v for k, v in refused.items() if k not in from_pretrained_kwargs}
    if refused:
        shown = ", ".join(f"{k!s}={v!r}"[:80] for k, v in refused.items())
        raise ValueError(
            f"The ticket's {TICKET_CONFIG_NAME} asks `from_pretrained` for {shown}, which a ticket may not set on "
            f"its own (only {', '.join(SAFE_MODEL_KWARGS)} with plain values). If you trust it, pass the argument "
            "yourself, e.g. load_model(..., trust_remote_code=True); otherwise pass your own value."
        )
    for key, value in safe.items():
        from_pretrained_kwargs.setdefault(key, value)
    return model_class.from_pretrained(path, **from_pretrained_kwargs)


def verify_base(mask: Mapping[str, torch.Tensor], model: nn.Module, config: TicketConfig) -> None:
    """Check that `model` holds the θ0 the ticket was found on (its fingerprint).

    Raises:
        `ValueError`: naming the first prunable tensor whose weights differ.
    """
    recorded = {e.get("name"): e.get("sha256") for e in config.prunable_parameters}
    if not config.base_fingerprint or any(not recorded.get(name) for name in mask):
        logger.warning("The ticket records no fingerprint of its base weights; the base model cannot be verified.")
        return
    params = dict(model.named_parameters())
    digests = tensor_digests({name: params[name] for name in mask})
    differing = [name for name in mask if digests[name] != recorded[name]]
    if not differing:
        return
    name = differing[0]
    dtype = params[name].dtype
    hint = (
        f" The model holds {dtype} weights: if the ticket was found in float32, load it with dtype=torch.float32."
        if dtype != torch.float32
        else ""
    )
    found_on = config.base_model_name_or_path or "an unrecorded base"
    found_on += f" (revision {config.revision})" if config.revision else ""
    raise ValueError(
        f"The base weights differ from those the ticket was found on: {len(differing)} of {len(mask)} prunable "
        f"tensors differ, first {name!r} (sha256 {digests[name][:12]}… vs "
        f"{cast(str, recorded[name])[:12]}… recorded). The ticket was found on {found_on}.{hint} Load that base, or "
        "pass verify_base=False to apply the mask anyway."
    )
