"""FSDP2 (`fully_shard`) parameters seen by a lottery run: full tensors to read, local shards to write.

Under FSDP2 every parameter of a sharded module is a `DTensor` whose rank-local part is a slice of the full tensor
(`Shard(0)`: `torch.chunk` of the rows). A lottery run keeps full masks and full θ0 (identical on every rank, as
under DDP) and translates at the two points where it touches parameters:

- **reading** (scoring a mask, snapshotting weights): [`unsharded`] all-gathers the parameters of every FSDP
  module for the duration of a `with` block, so the code inside sees plain full tensors;
- **writing** (rewinding, enforcing the mask on weights, gradients and optimizer moments): each rank writes its own
  shard, [`local_part`] of the full tensor, in place. Writes into gathered parameters would be lost when FSDP
  reshards, so [`reshard`] frees them first.

Without FSDP every helper is a no-op, so the same code serves one process, DDP and FSDP2.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

try:  # torch >= 2.6 exports both publicly
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor, Replicate, Shard
except ImportError:  # pragma: no cover - torch builds without distributed support
    FSDPModule = DTensor = Replicate = Shard = None  # type: ignore[assignment,misc]

__all__ = ["fsdp_modules", "is_fsdp_sharded", "local_part", "local_tensor", "reshard", "unsharded"]


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` that `fully_shard` wrapped (outermost first)."""
    if FSDPModule is None:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_fsdp_sharded(model: nn.Module) -> bool:
    """True when `model` (or a submodule) is sharded by FSDP2."""
    return bool(fsdp_modules(model))


@contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """All-gather every FSDP2 module's parameters for the block: inside, `model.named_parameters()` are plain full
    tensors (every rank must enter the block: it is a collective). Read-only: FSDP reshards from the shards, so a
    write inside the block is lost."""
    modules = fsdp_modules(model)
    for module in modules:
        module.unshard()  # type: ignore[operator]
    try:
        yield model
    finally:
        reshard(model)


def reshard(model: nn.Module) -> None:
    """Free any gathered parameters (FSDP keeps the root's after an evaluation forward), so that what is written to
    the shards is what the next forward gathers."""
    for module in fsdp_modules(model):
        module.reshard()  # type: ignore[operator]


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-local part of a `DTensor` (the tensor itself otherwise); in-place writes to it change the shard."""
    if DTensor is not None and isinstance(tensor, DTensor):
        return tensor.to_local()
    return tensor


def local_part(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The slice of `full` that `like` holds on this rank: `full` itself unless `like` is a sharded `DTensor`.

    Raises:
        `NotImplementedError`: `like` is placed other than by `Shard` / `Replicate` (e.g. tensor parallelism's
            strided shards).
        `ValueError`: `full` does not have `like`'s global shape.
    """
    if DTensor is None or not isinstance(like, DTensor):
        return full
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"A full tensor of shape {tuple(full.shape)} cannot be sharded like {tuple(like.shape)}.")
    part = full
    mesh = like.device_mesh
    for mesh_dim, placement in enumerate(like.placements):
        if type(placement) is Replicate:
            continue
        if type(placement) is not Shard:
            raise NotImplementedError(
                f"hf_lottery shards masks and weights by FSDP2's row sharding only, not by {placement!r}."
            )
        pieces = torch.chunk(part, mesh.size(mesh_dim), dim=placement.dim)
        index = mesh.get_local_rank(mesh_dim)
        # torch.chunk gives fewer pieces than ranks for short dimensions: the ranks past them hold nothing.
        part = pieces[index] if index < len(pieces) else part.narrow(placement.dim, 0, 0)
    expected = tuple(like.to_local().shape)
    if tuple(part.shape) != expected:
        raise ValueError(f"The local shard has shape {expected}, the slice of the full tensor {tuple(part.shape)}.")
    return part.contiguous()
