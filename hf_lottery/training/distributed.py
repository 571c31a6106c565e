"""Multi-process runs (DDP through the Trainer's accelerate backend): same θ0 and same mask on every rank.

DDP keeps the weights of all ranks equal *while it trains*: it broadcasts rank 0's weights when it wraps the model
(once, in round 0) and averages the gradients of every step. A lottery run also sets weights outside training —
θ0 is snapshotted before DDP wraps the model, every round rewinds to it, and each rank computes its own mask — so
hf_lottery makes these agree explicitly: θ0 is taken from the main process, and each new mask is checked against
the main process's (a digest per round) and replaced by it if a rank disagrees.

FSDP2 (`fully_shard`, through the Trainer's accelerate backend) is supported by `LotteryTrainer` for unstructured
tickets scored from the weights (magnitude, random): masks and θ0 stay full and identical on every rank, scoring
reads all-gathered parameters, and every write (rewinding, the mask on weights, gradients and moments) goes to each
rank's own shard (`hf_lottery.training.sharding`). FSDP1, DeepSpeed (whose fp32 master weights would revive the
pruned weights hf_lottery zeroes in the model) and the FSDP setups not covered yet are refused with what to do.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers.utils import logging

from ..ticket.mask import TicketMask

logger = logging.get_logger(__name__)

__all__ = [
    "broadcast_weights_",
    "check_distributed_setup",
    "fsdp_version",
    "is_distributed",
    "mask_digest",
    "sync_mask",
]


def is_distributed() -> bool:
    """True when a `torch.distributed` process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def fsdp_version(args: Any) -> int | None:
    """The FSDP version a Trainer with these arguments will shard with (None: no FSDP), from `fsdp=` /
    `fsdp_config` (transformers defaults to 2) or from `accelerate launch`'s environment (accelerate defaults to 1).
    """
    if getattr(args, "fsdp", None):
        config = getattr(args, "fsdp_config", None)
        config = config if isinstance(config, dict) else {}
        return int(config.get("version") or config.get("fsdp_version") or 2)
    if _env_flag("ACCELERATE_USE_FSDP"):
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None


# What FSDP2 runs are tested for: scores read from the weights alone (scorers that run the model, e.g. SynFlow or
# Wanda, would run it inside the all-gather) and unstructured masks (structured surgery rebuilds modules).
FSDP_PRUNING_METHODS = ("magnitude", "random")


def _fsdp_problem(args: Any) -> str | None:
    if getattr(args, "granularity", "weight") != "weight":
        return f"granularity={args.granularity!r} (structured tickets compact the model)"
    if getattr(args, "pruning_method", "magnitude") not in FSDP_PRUNING_METHODS:
        return f"pruning_method={args.pruning_method!r} (only {', '.join(FSDP_PRUNING_METHODS)} under FSDP)"
    if getattr(args, "distill_alpha", 0.0) > 0:
        return "distillation (distill_alpha > 0)"
    if getattr(args, "early_bird_interval_steps", None) is not None:
        return "early-bird rounds (early_bird_interval_steps)"
    return None


def check_distributed_setup(args: Any, fsdp2: bool = False) -> None:
    """Refuse the setups hf_lottery cannot keep a mask exact in, with what to do instead.

    Args:
        args (`TrainingArguments`): the Trainer's arguments.
        fsdp2 (`bool`, *optional*, defaults to `False`): whether the caller supports FSDP2 (`LotteryTrainer`).

    Raises:
        `NotImplementedError`: DeepSpeed, FSDP1, or FSDP where the caller does not support it or with a setting not
            supported under FSDP yet (structured granularity, scorers that run the model, distillation,
            early-bird rounds).
        `ValueError`: several processes were launched but the Trainer will not run DDP (on a machine without a GPU,
            `use_cpu=True` is needed), so each process would train and prune its own model.
    """
    version = fsdp_version(args)
    if version is not None and (not fsdp2 or version != 2):
        raise NotImplementedError(
            f"hf_lottery supports FSDP2 (`fully_shard`) in LotteryTrainer only; this run asks for FSDP{version} in "
            f"{'LotteryTrainer' if fsdp2 else 'LotteryCallback'}. Use LotteryTrainer with "
            "`fsdp_config={'version': 2}` (accelerate: `fsdp_version: 2`), or train with DDP (remove `fsdp=` / "
            "`--fsdp`, or use an `accelerate config` without FSDP)."
        )
    problem = _fsdp_problem(args) if version is not None else None
    if problem is not None:
        raise NotImplementedError(
            f"hf_lottery does not support {problem} under FSDP yet. Train this setting with DDP, or run an "
            "unstructured magnitude lottery under FSDP."
        )
    if getattr(args, "deepspeed", None) or _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise NotImplementedError(
            "hf_lottery does not support DeepSpeed: its fp32 master weights would revive the pruned weights that "
            "hf_lottery zeroes in the model. Train with DDP (remove `deepspeed=`, or use an `accelerate config` "
            "without DeepSpeed)."
        )
    if is_distributed() and str(getattr(args, "parallel_mode", "")) != "ParallelMode.DISTRIBUTED":
        raise ValueError(
            f"{dist.get_world_size()} processes are running but the Trainer will not use DDP "
            f"(parallel_mode={getattr(args, 'parallel_mode', None)}), so every process would train and prune its own "
            "model. On a machine without a GPU pass `use_cpu=True` (and `ddp_backend='gloo'`) to the training "
            "arguments."
        )


def _collective_device(module: nn.Module | None = None) -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if module is not None:
        for param in module.parameters():
            return param.device
    return torch.device("cpu")


@torch.no_grad()
def broadcast_weights_(model: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of `model` from process `src` to all processes, in place.

    A no-op outside a multi-process run. Call it on every process, at the same point.
    """
    if not is_distributed():
        return
    device = _collective_device(model)
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device == device:
            dist.broadcast(tensor.data, src=src)
        else:
            staged = tensor.data.to(device)
            dist.broadcast(staged, src=src)
            tensor.data.copy_(staged)


def mask_digest(mask: TicketMask) -> str:
    """A short hexadecimal digest of a mask's names, shapes and values (equal masks, equal digests)."""
    h = hashlib.sha256()
    for name, keep in mask.items():
        h.update(name.encode())
        h.update(repr(tuple(keep.shape)).encode())
        h.update(keep.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def sync_mask(mask: TicketMask, src: int = 0) -> TicketMask:
    """Return the mask of process `src` on every process.

    Every rank prunes the same weights, so the masks agree; this checks it with one digest per rank and, if one
    differs (e.g. a scoring method that is not deterministic), sends `src`'s mask to all. A no-op outside a
    multi-process run. Call it on every process, at the same point.
    """
    if not is_distributed():
        return mask
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, mask_digest(mask))
    if len(set(digests)) == 1:
        return mask
    logger.warning(
        "The processes computed different masks (digests %s); using process %d's mask on all of them.", digests, src
    )
    device = _collective_device()
    synced = {}
    for name, keep in mask.items():
        staged = keep.to(device=device, dtype=torch.uint8)
        dist.broadcast(staged, src=src)
        synced[name] = staged.to("cpu").bool()
    return TicketMask(synced, metadata=mask.metadata)
