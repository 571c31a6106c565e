"""`TicketConfig`: what a ticket records about how it was found (`ticket_config.json`)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import TrainingArguments
from transformers.utils import logging

from ..constants import TICKET_CONFIG_NAME, TICKET_FORMAT_VERSION
from ..utils.io import read_json
from .figures import mask_figures
from .fingerprint import combine_digests, tensor_digests

logger = logging.get_logger(__name__)

# The `model_kwargs` a ticket may hand to `from_pretrained`, each with the check its value must pass. They only
# shape the task head; anything else (trust_remote_code, device_map, file paths, attn_implementation kernels from
# the Hub, quantization configs...) can run code or touch files, and is passed only when the caller gives it.
_DTYPES = ("float32", "float16", "bfloat16", "float64", "auto")
_PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
MAX_NUM_LABELS = 1 << 20
SAFE_MODEL_KWARGS: dict[str, Any] = {
    "num_labels": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_NUM_LABELS,
    "id2label": lambda v: (
        isinstance(v, dict)
        and len(v) <= MAX_NUM_LABELS
        and all(isinstance(k, str) and k.isdigit() and isinstance(x, str) for k, x in v.items())
    ),
    "label2id": lambda v: (
        isinstance(v, dict)
        and len(v) <= MAX_NUM_LABELS
        and all(isinstance(k, str) and isinstance(x, int) and not isinstance(x, bool) for k, x in v.items())
    ),
    "problem_type": lambda v: v in _PROBLEM_TYPES,
    "dtype": lambda v: v in _DTYPES,
    "torch_dtype": lambda v: v in _DTYPES,
}


def split_model_kwargs(model_kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ticket's `model_kwargs` into the allow-listed ones with valid values (see `SAFE_MODEL_KWARGS`) and
    the others, which a ticket may not pass to `from_pretrained` on its own.

    Returns:
        `tuple[dict, dict]`: `(safe, refused)`.
    """
    safe: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    for key, value in model_kwargs.items():
        check = SAFE_MODEL_KWARGS.get(key) if isinstance(key, str) else None
        if check is not None and check(value):
            safe[key] = value
        else:
            refused[key] = value
    return safe, refused


# Lottery settings recorded besides the fields LotteryArguments adds to TrainingArguments.
_TRAINING_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "lr_scheduler_type",
    "seed",
)


# The JSON types each field of `ticket_config.json` may hold (null is always allowed and means the default).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "base_model_name_or_path": (str,),
    "revision": (str,),
    "base_fingerprint": (str,),
    "prunable_parameters": (list,),
    "architecture": (str,),
    "model_kwargs": (dict,),
    "task": (str,),
    "dataset": (str,),
    "metric": (str,),
    "pruning_method": (str,),
    "lottery_args": (dict,),
    "sparsity": (int, float),
    "history": (list,),
    "mask_sha256": (str,),
    "hf_lottery_version": (str,),
    "extra": (dict,),
    "files_sha256": (dict,),
}


@dataclass
class TicketConfig:
    """What a ticket records about how it was found: `ticket_config.json`, and `TicketMask.metadata` in memory.

    Build one with [`TicketConfig.from_model`] (what a trainer does when it finishes a ticket) or read it from a
    mask with [`TicketConfig.from_metadata`]. Keys of the metadata that are not fields are kept in `extra` and
    written back at the top level, so files from newer versions survive a round trip.
    """

    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub id or local path of the base model whose weights θ0 the ticket masks."}
    )
    revision: str | None = field(
        default=None, metadata={"help": "Revision (commit) of the base model on the Hub, when known."}
    )
    base_fingerprint: str | None = field(
        default=None,
        metadata={
            "help": "'sha256:<hex>' over the prunable tensors of θ0 (see hf_lottery.ticket.fingerprint); None if unknown."
        },
    )
    prunable_parameters: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"help": "One {'name', 'shape', 'sha256'} per masked parameter, in mask order (sha256: θ0 digest)."},
    )
    architecture: str | None = field(
        default=None, metadata={"help": "Model class the ticket was found with, e.g. BertForSequenceClassification."}
    )
    model_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "from_pretrained arguments that rebuild the architecture, e.g. {'num_labels': 2}."},
    )
    task: str | None = field(default=None, metadata={"help": "Task the ticket was found on, e.g. 'sst2'."})
    dataset: str | None = field(default=None, metadata={"help": "Hub dataset id of the task, e.g. 'nyu-mll/glue'."})
    metric: str | None = field(
        default=None, metadata={"help": "Main evaluation metric of the history, e.g. 'eval_accuracy'."}
    )
    pruning_method: str | None = field(default=None, metadata={"help": "Scoring method, e.g. 'magnitude'."})
    lottery_args: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "The lottery arguments of the run (LotteryArguments' own fields)."}
    )
    sparsity: float | None = field(default=None, metadata={"help": "Fraction of the masked weights pruned."})
    history: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"help": "One record per IMP round: round, sparsity, target_sparsity, metrics, train_loss, ..."},
    )
    mask_sha256: str | None = field(
        default=None, metadata={"help": "SHA-256 of ticket_mask.safetensors, checked on load (set when saved)."}
    )
    hf_lottery_version: str | None = field(default=None, metadata={"help": "hf_lottery version that wrote it."})
    format_version: int = field(
        default=TICKET_FORMAT_VERSION, metadata={"help": "Version of this format; readers refuse newer ones."}
    )
    extra: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Other metadata, written back at the top level of the JSON."}
    )
    files_sha256: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "SHA-256 of the other files written with it (README.md, sparsity_plot.png): a folder whose card "
            "or plot was replaced without its config is detected on load."
        },
    )

    # -- Conversions ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the fields (without `extra`) merged with `extra`."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return _jsonable({**self.extra, **data})

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> TicketConfig:
        """Read the fields from `TicketMask.metadata` (missing fields take their defaults, others go to `extra`)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in metadata.items() if k in names}
        extra = {k: v for k, v in metadata.items() if k not in names and k != "extra"}
        extra.update(metadata.get("extra") or {})
        return cls(**known, extra=extra)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike = TICKET_CONFIG_NAME) -> TicketConfig:
        """Parse a loaded `ticket_config.json`, checking its format version.

        Raises:
            `ValueError`: the data is not a ticket config, or its `format_version` is newer than this library.
        """
        if not isinstance(data, Mapping) or "format_version" not in data:
            raise ValueError(f"{source} is not an hf_lottery ticket config: it has no 'format_version'.")
        version = data["format_version"]
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"{source}: invalid format_version {version!r} (expected an integer >= 1).")
        if version > TICKET_FORMAT_VERSION:
            raise ValueError(
                f"{source} has ticket format version {version}, but this hf_lottery reads versions up to "
                f"{TICKET_FORMAT_VERSION}. Upgrade hf_lottery (pip install -U hf-lottery) to load this ticket."
            )
        for key, kinds in _FIELD_TYPES.items():
            value = data.get(key)
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
                expected = " or ".join(k.__name__ for k in kinds)
                raise ValueError(f"{source}: {key!r} must be a {expected}, got {type(value).__name__}.")
        entries = data.get("prunable_parameters") or []
        if not all(
            isinstance(e, Mapping)
            and isinstance(e.get("name"), str)
            and isinstance(e.get("shape"), list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])
            and isinstance(e.get("sha256"), (str, type(None)))
            for e in entries
        ):
            raise ValueError(
                f"{source}: every entry of 'prunable_parameters' needs a string 'name', a 'shape' (a list of sizes) "
                "and a string 'sha256' (or null)."
            )
        names = [e["name"] for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: a parameter appears twice in 'prunable_parameters'.")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in (data.get("files_sha256") or {}).items()):
            raise ValueError(f"{source}: 'files_sha256' must map file names to hex digests.")
        if not all(isinstance(r, Mapping) for r in data.get("history") or []):
            raise ValueError(f"{source}: every entry of 'history' must be an object (one per round).")
        # null in a list or dict field means its default (an empty one)
        data = {k: v for k, v in data.items() if not (v is None and _FIELD_TYPES.get(k) in ((list,), (dict,)))}
        return cls.from_metadata(data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> TicketConfig:
        """Read `ticket_config.json`; a `ValueError` names the file when it is not valid JSON or not a config."""
        data = read_json(
            path, what="the ticket config", hint="The ticket folder is damaged: save or download it again."
        )
        return cls.from_dict(data, source=path)

    # -- Construction -----------------------------------------------------------------------------------------
    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        mask: Mapping[str, torch.Tensor],
        *,
        weights: Mapping[str, torch.Tensor] | None = None,
        lottery_args: Any = None,
        history: list[dict[str, Any]] | None = None,
        task: str | None = None,
        dataset: str | None = None,
        metric: str | None = None,
    ) -> TicketConfig:
        """Describe a ticket found on `model`.

        Args:
            model (`nn.Module`): the model the mask was found on; its `name_or_path` and `config._commit_hash`
                give the base model and revision.
            mask (`Mapping[str, torch.Tensor]`): the mask; its names and shapes are recorded.
            weights (`Mapping[str, torch.Tensor]`, *optional*): θ0, the weights the ticket rewinds to (e.g. the
                trainer's snapshot at the start of `train()`), fingerprinted for `load_model`. Default: the
                model's current parameters (right only if it still holds θ0).
            lottery_args (`LotteryArguments` or `dict`, *optional*): recorded in `lottery_args`: the fields a
                `LotteryArguments` adds to `TrainingArguments`, plus the main training hyperparameters.
            history (`list[dict]`, *optional*): the per-round records.
            task, dataset, metric (`str`, *optional*): the task name, its Hub dataset id, the main metric.
        """
        inner = getattr(model, "module", model)  # DDP / accelerate wrappers
        params = dict(inner.named_parameters())
        source = weights if weights is not None else params
        for name in mask:
            if name not in source:
                raise ValueError(f"Cannot fingerprint {name!r}: it is not among the weights given.")
        digests = tensor_digests({name: source[name] for name in mask})
        entries = [{"name": name, "shape": list(m.shape), "sha256": digests[name]} for name, m in mask.items()]
        base = getattr(inner, "name_or_path", None) or getattr(getattr(inner, "config", None), "_name_or_path", None)
        args = _lottery_args_dict(lottery_args)
        model_kwargs = {}
        num_labels = getattr(getattr(inner, "config", None), "num_labels", None)
        if type(inner).__name__.endswith(("ForSequenceClassification", "ForTokenClassification")) and num_labels:
            model_kwargs["num_labels"] = int(num_labels)
        return cls(
            base_model_name_or_path=base or None,
            revision=getattr(getattr(inner, "config", None), "_commit_hash", None),
            base_fingerprint=combine_digests(entries),
            prunable_parameters=entries,
            architecture=type(inner).__name__,
            model_kwargs=model_kwargs,
            task=task,
            dataset=dataset,
            metric=metric,
            pruning_method=args.get("pruning_method"),
            lottery_args=args,
            history=list(history or []),
        )

    def for_mask(self, mask: Mapping[str, torch.Tensor]) -> TicketConfig:
        """A copy describing `mask` exactly: its names, shapes and sparsity (θ0 digests kept where names match)."""
        digests = {e.get("name"): e.get("sha256") for e in self.prunable_parameters}
        entries = [{"name": n, "shape": list(m.shape), "sha256": digests.get(n)} for n, m in mask.items()]
        recorded = [(e.get("name"), list(e.get("shape", []))) for e in self.prunable_parameters]
        if recorded and recorded != [(e["name"], e["shape"]) for e in entries]:
            logger.warning("The ticket's metadata describes other parameters than its mask; using the mask's.")
        return dataclasses.replace(
            self,
            prunable_parameters=entries,
            base_fingerprint=combine_digests(entries),
            sparsity=mask_figures(mask)["__total__"]["sparsity"],
            lottery_args=dict(self.lottery_args),
            model_kwargs=dict(self.model_kwargs),
            history=list(self.history),
            extra=dict(self.extra),
            files_sha256={},
        )


def _lottery_args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    if dataclasses.is_dataclass(args):
        base = (
            {f.name for f in dataclasses.fields(TrainingArguments)} if isinstance(args, TrainingArguments) else set()
        )
        own = [f.name for f in dataclasses.fields(args) if f.name not in base]
        keep = own + [name for name in _TRAINING_HYPERPARAMETERS if name in base]
        return {name: getattr(args, name) for name in keep}
    raise TypeError(f"lottery_args must be a dataclass (LotteryArguments) or a dict, got {type(args).__name__}.")


def _jsonable(value: Any) -> Any:
    """Plain JSON types: enums and paths to strings, tensors and numpy scalars to numbers, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):  # enums
        return value.value
    return str(value)
