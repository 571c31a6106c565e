"""Early-bird rounds (You et al., ICLR 2020; EarlyBERT, ACL 2021): a round ends once its mask stops changing.

Every `early_bird_interval_steps` optimizer steps a round computes the mask it would produce if it ended now (the
next level of the schedule, scored on the current weights with the run's method and granularity). When the
normalised Hamming distance between two consecutive such masks stays below `early_bird_threshold` for
`early_bird_patience` checks in a row, the round stops: its weights are then pruned as if it had trained to the end.
The watcher's state (the last mask, the count, the distances) travels in each checkpoint, so a round resumed in the
middle stops where the uninterrupted one would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open

from ..utils.io import load_tensors, save_tensors

_STATE_KEY = "hf_lottery.early_bird"


def mask_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Normalised Hamming distance: the fraction of the masked weights that one mask keeps and the other prunes."""
    total = sum(m.numel() for m in a.values())
    differing = sum(int(torch.count_nonzero(a[name] != b[name])) for name in a)
    return differing / total if total else 0.0


class EarlyBird:
    """Watches the masks a round would produce and says when they have stopped changing.

    Args:
        threshold (`float`): distances below this count as "not changing".
        patience (`int`): how many checks in a row must be below `threshold`.
    """

    def __init__(self, threshold: float, patience: int):
        self.threshold, self.patience = threshold, patience
        self.reset()

    def reset(self) -> None:
        self.previous: dict[str, torch.Tensor] | None = None
        self.source: str | None = None  # the checkpoint file the state was read from, for errors
        self.calm = 0
        self.distances: list[float] = []
        self.stopped_at: int | None = None

    def check(self, mask: Mapping[str, torch.Tensor], step: int) -> bool:
        """Take the mask the round would produce at `step`; True when the round should stop now."""
        current = {name: m.detach().to("cpu", torch.bool) for name, m in mask.items()}
        if self.previous is not None and {n: m.shape for n, m in self.previous.items()} != {
            n: m.shape for n, m in current.items()
        }:
            # Only a state read from another run's checkpoint can disagree with the round's own masks.
            raise ValueError(
                f"The early-bird state {self.source} masks other tensors than this run prunes; delete that file (the "
                "round then watches its masks afresh)."
            )
        if self.previous is not None:
            distance = mask_distance(self.previous, current)
            self.distances.append(round(distance, 8))
            self.calm = self.calm + 1 if distance < self.threshold else 0
        self.previous = current
        if self.calm >= self.patience:
            self.stopped_at = step
            return True
        return False

    def summary(self) -> dict[str, Any]:
        """What a round's history record keeps: the distances seen and the step it stopped at (None: never)."""
        return {"stopped_at_step": self.stopped_at, "distances": list(self.distances)}

    # -- checkpoints ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the watcher's state to a safetensors file (the last mask as uint8 tensors, the rest as metadata)."""
        tensors = {name: m.to(torch.uint8) for name, m in (self.previous or {}).items()}
        meta = {"calm": self.calm, "distances": self.distances, "stopped_at": self.stopped_at}
        save_tensors(path, tensors, metadata={_STATE_KEY: json.dumps(meta)})

    def load(self, path: str | os.PathLike) -> None:
        """Read a state written by [`save`].

        Raises:
            `ValueError`: naming the file when it is not such a state.
        """
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})[_STATE_KEY])
            tensors = load_tensors(path)
            calm, distances, stopped = int(meta["calm"]), [float(d) for d in meta["distances"]], meta["stopped_at"]
        except Exception as err:  # safetensors, JSON and key errors alike mean a damaged state
            raise ValueError(
                f"{path} is not a readable early-bird state ({type(err).__name__}: {err}); delete that checkpoint "
                "folder to resume from the previous one."
            ) from None
        self.previous = {name: t.bool() for name, t in tensors.items()} or None
        self.source = str(path)
        self.calm, self.distances = calm, distances
        self.stopped_at = None if stopped is None else int(stopped)
