"""On-disk state of a lottery run, so that a killed run resumes where it stopped.

Layout under `output_dir/lottery_state/`: `state.json` (round, phase, schedule, history), `theta0.safetensors`
(the weights at the start of `train()`), `rewind_weights.safetensors` (rewind="step"), `teacher.safetensors`
(the round-0 model distillation learns from), one `mask_round_{r}.safetensors` per round and
`trained_round_{r}.safetensors` (weights at the end of the last finished round). Every file is written atomically; `state.json` is written last, so it never points at a file
that is not complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constants import (
    LOTTERY_STATE_DIR,
    LOTTERY_STATE_NAME,
    REWIND_WEIGHTS_NAME,
    ROUND_MASK_TEMPLATE,
    TEACHER_NAME,
    THETA0_NAME,
)
from ..ticket.mask import TicketMask
from ..utils.io import load_tensors, read_json, save_tensors, write_json
from .checks import MAX_SCHEDULE_ROUNDS
from .sharding import local_part, local_tensor, reshard, unsharded

STATE_FORMAT_VERSION = 1
RUN_SETTINGS_NAME = "settings.json"


def snapshot_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of every parameter and persistent buffer, keyed by name (tied weights appear once); full tensors
    also under FSDP2 (gathered: every rank must call it)."""
    with unsharded(model):
        weights = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}
    for module_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                weights[f"{module_name}.{name}" if module_name else name] = buf.detach().to("cpu", copy=True)
    return weights


@torch.no_grad()
def load_weights_(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (from [`snapshot_weights`]) into `model` in place; every entry must exist with its shape.
    Under FSDP2 each rank copies its shard's slice."""
    reshard(model)
    targets: dict[str, torch.Tensor] = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    for name, value in weights.items():
        hint = "The saved weights come from another model: resume with the model the run started with."
        if name not in targets:
            raise ValueError(f"Cannot rewind: the model has no parameter or buffer {name!r}. {hint}")
        if targets[name].shape != value.shape:
            raise ValueError(
                f"Cannot rewind {name!r}: shape {tuple(value.shape)} vs {tuple(targets[name].shape)}. {hint}"
            )
        local_tensor(targets[name]).copy_(local_part(value, targets[name]))


PHASES = ("prepared", "trained")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a `state.json`, or None."""
    schedule, history, round_index = state["schedule"], state["history"], state["round"]
    if not isinstance(schedule, list) or not schedule or len(schedule) > MAX_SCHEDULE_ROUNDS + 1:
        return "'schedule' must be a non-empty list of sparsities"
    if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 <= s < 1 for s in schedule):
        return "'schedule' must hold sparsities in [0, 1)"
    if not _is_index(round_index) or round_index >= len(schedule):
        return f"'round' must be a round of the schedule (0 to {len(schedule) - 1}), got {str(round_index)[:20]}"
    if state["phase"] not in PHASES:
        return f"'phase' must be one of {', '.join(PHASES)}, got {str(state['phase'])[:20]!r}"
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        return "'history' must be a list of objects, one per finished round"
    return None


class RunState:
    """Reads and writes the files of one lottery run (only the main process writes)."""

    def __init__(self, output_dir: str | os.PathLike, should_write: bool = True):
        self.dir = Path(output_dir) / LOTTERY_STATE_DIR
        self.should_write = should_write

    # -- state.json -------------------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.dir / LOTTERY_STATE_NAME).is_file()

    def read(self) -> dict[str, Any]:
        """`state.json`, checked field by field: a `ValueError` names the file and the field at fault."""
        path = self.dir / LOTTERY_STATE_NAME
        start_over = f"Remove {self.dir} to start over."
        try:
            state = read_json(path, what="the lottery run state", hint=start_over)
        except FileNotFoundError as err:
            raise ValueError(f"Cannot read the lottery run state {path}: {err}. {start_over}") from None
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not an object (edited by hand?). {start_over}")
        version = state.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(
                f"{path} has format version {str(version)[:20]!r}; this hf_lottery reads "
                f"{STATE_FORMAT_VERSION}. Finish the run with the version that started it, or start over."
            )
        missing = [key for key in ("round", "phase", "schedule", "history") if key not in state]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)} (edited by hand?). {start_over}")
        problem = _state_problem(state)
        if problem:
            raise ValueError(f"{path}: {problem} (edited by hand?). {start_over}")
        return state

    def write(self, round_index: int, phase: str, schedule: list[float], history: list[dict[str, Any]]) -> None:
        if self.should_write:
            write_json(
                self.dir / LOTTERY_STATE_NAME,
                {
                    "format_version": STATE_FORMAT_VERSION,
                    "round": round_index,
                    "phase": phase,
                    "schedule": schedule,
                    "history": history,
                },
            )
            if phase == "trained":
                # Only the last finished round's weights are ever needed again; deleted only once state.json no
                # longer points before them (a kill between the two must not lose the weights a resume rewinds to).
                for old in self.dir.glob("trained_round_*.safetensors"):
                    if old.name != f"trained_round_{round_index}.safetensors":
                        old.unlink(missing_ok=True)

    # -- tensors ----------------------------------------------------------------------------------------------
    def _save(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        if self.should_write:
            save_tensors(self.dir / name, tensors)

    def _load(self, name: str) -> dict[str, torch.Tensor]:
        path = self.dir / name
        if not path.is_file():
            raise FileNotFoundError(f"The lottery run state is missing {path}; remove {self.dir} to start over.")
        try:
            return load_tensors(path)
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise ValueError(f"{path} is damaged ({err}); remove {self.dir} to start over.") from err

    def save_settings(self, settings: dict[str, Any]) -> None:
        """The settings that decide the run's ticket (see `checks.ticket_settings`), checked on resume."""
        if self.should_write:
            write_json(self.dir / RUN_SETTINGS_NAME, settings)

    def load_settings(self) -> dict[str, Any] | None:
        """The settings saved by [`save_settings`], or None for a run state written before they were recorded."""
        path = self.dir / RUN_SETTINGS_NAME
        if not path.is_file():
            return None
        settings = read_json(path, what="the lottery run settings", hint=f"Remove {self.dir} to start over.")
        if not isinstance(settings, dict):
            raise ValueError(
                f"{path} holds a {type(settings).__name__}, not an object. Remove {self.dir} to start over."
            )
        return settings

    def save_theta0(self, weights: dict[str, torch.Tensor]) -> None:
        self._save(THETA0_NAME, weights)

    def load_theta0(self) -> dict[str, torch.Tensor]:
        return self._load(THETA0_NAME)

    def save_rewind_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self._save(REWIND_WEIGHTS_NAME, weights)

    def has_rewind_weights(self) -> bool:
        return (self.dir / REWIND_WEIGHTS_NAME).is_file()

    def load_rewind_weights(self) -> dict[str, torch.Tensor]:
        return self._load(REWIND_WEIGHTS_NAME)

    def save_teacher(self, weights: dict[str, torch.Tensor]) -> None:
        """The round-0 dense model distillation learns from, written once (atomically) when round 0 ends."""
        self._save(TEACHER_NAME, weights)

    def has_teacher(self) -> bool:
        return (self.dir / TEACHER_NAME).is_file()

    def load_teacher(self) -> dict[str, torch.Tensor]:
        return self._load(TEACHER_NAME)

    def save_trained(self, round_index: int, weights: dict[str, torch.Tensor]) -> None:
        self._save(f"trained_round_{round_index}.safetensors", weights)

    def load_trained(self, round_index: int) -> dict[str, torch.Tensor]:
        return self._load(f"trained_round_{round_index}.safetensors")

    def save_mask(self, round_index: int, mask: TicketMask) -> None:
        self._save(ROUND_MASK_TEMPLATE.format(round=round_index), mask.to_dict())

    def load_mask(self, round_index: int) -> TicketMask:
        return TicketMask(self._load(ROUND_MASK_TEMPLATE.format(round=round_index)))
