"""`TicketMask`: a named dict of boolean tensors (True = kept) with a sparsity report."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .peft_utils import named_parameters


class TicketMask(Mapping[str, torch.Tensor]):
    """A pruning mask over named parameters: `{parameter name: torch.BoolTensor}`, True where a weight is kept.

    A `TicketMask` is immutable: pruning produces a new mask. It validates its own invariants on construction
    (boolean tensors only) and against a model with [`~TicketMask.validate`], which names the first parameter
    whose name or shape does not fit.

    Args:
        masks (`Mapping[str, torch.Tensor]`):
            Parameter name to mask. Tensors of any dtype holding only 0/1 are accepted and stored as `torch.bool`
            on the CPU.
        metadata (`dict`, *optional*):
            Free-form information about how the mask was found (base model, method, history...). Carried along by
            [`~TicketMask.save_pretrained`].
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], metadata: dict[str, Any] | None = None):
        checked: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"Mask for {name!r} must be a torch.Tensor, got {type(mask).__name__}.")
            if mask.dtype != torch.bool:
                if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
                    raise ValueError(
                        f"Mask for {name!r} holds values other than 0 and 1; a mask is boolean: True (1) keeps a "
                        "weight, False (0) prunes it. Threshold scores yourself, or use hf_lottery.prune()."
                    )
                mask = mask != 0
            checked[name] = mask.detach().to("cpu", copy=False)
        self._masks = checked
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- Mapping protocol -------------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if list(self.keys()) != list(other.keys()):
            return False
        return all(
            self[k].shape == other[k].shape and bool(torch.equal(self[k], other[k].bool())) for k in self._masks
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TicketMask({len(self)} tensors, {self.num_params:,} weights, sparsity={self.sparsity:.4f})"

    # -- Construction -----------------------------------------------------------------------------------------
    @classmethod
    def ones_like(cls, parameters: Mapping[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> TicketMask:
        """A dense mask (nothing pruned) over `parameters` (`{name: tensor}`)."""
        return cls({name: torch.ones(p.shape, dtype=torch.bool) for name, p in parameters.items()}, metadata)

    # -- Figures ----------------------------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        """Number of weights covered by the mask."""
        return sum(m.numel() for m in self._masks.values())

    @property
    def num_kept(self) -> int:
        """Number of weights kept (True entries)."""
        return sum(int(m.sum()) for m in self._masks.values())

    @property
    def num_pruned(self) -> int:
        """Number of weights pruned (False entries)."""
        return self.num_params - self.num_kept

    @property
    def density(self) -> float:
        """Fraction of covered weights that are kept."""
        total = self.num_params
        return self.num_kept / total if total else 1.0

    @property
    def sparsity(self) -> float:
        """Fraction of covered weights that are pruned."""
        return 1.0 - self.density

    def report(self) -> dict[str, dict[str, float | int]]:
        """Per-tensor figures: `{name: {"numel", "kept", "sparsity"}}`, plus an `"__total__"` entry."""
        rows: dict[str, dict[str, float | int]] = {}
        for name, mask in self._masks.items():
            kept = int(mask.sum())
            rows[name] = {"numel": mask.numel(), "kept": kept, "sparsity": 1.0 - kept / max(mask.numel(), 1)}
        rows["__total__"] = {"numel": self.num_params, "kept": self.num_kept, "sparsity": self.sparsity}
        return rows

    def is_subset_of(self, other: Mapping[str, torch.Tensor]) -> bool:
        """True if every weight kept here is also kept in `other` (masks are nested)."""
        return all(name in other and bool((self[name] <= other[name].bool()).all()) for name in self._masks)

    # -- Models -----------------------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Check that every masked parameter exists in `model` with the mask's shape.

        Raises:
            `ValueError`: naming the first parameter that is missing or whose shape differs.
        """
        params = named_parameters(model)  # original names, also under peft
        for name, mask in self._masks.items():
            if name not in params:
                near = [p for p in params if p.endswith(name) or name.endswith(p)]
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise ValueError(
                    f"The ticket masks parameter {name!r}, which {type(model).__name__} does not have.{hint} "
                    "The ticket was found on a model with other parameter names; load it onto the same architecture."
                )
            if tuple(params[name].shape) != tuple(mask.shape):
                raise ValueError(
                    f"Shape mismatch for {name!r}: the ticket has {tuple(mask.shape)}, the model "
                    f"{tuple(params[name].shape)}. The ticket was found on a model of another size."
                )

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of `model` in place (after [`~TicketMask.validate`]) and return `model`."""
        self.validate(model)
        params = named_parameters(model)
        for name, mask in self._masks.items():
            param = params[name]
            param.mul_(mask.to(device=param.device, dtype=param.dtype))
        return model

    def to_dict(self) -> dict[str, torch.Tensor]:
        """A plain `{name: BoolTensor}` copy."""
        return dict(self._masks)
