"""The ticket artifact: `TicketConfig`, saving and loading ticket folders, the Hub, and sparse checkpoints.

A ticket folder (format version 1) holds

- `ticket_config.json`: a [`TicketConfig`] as JSON with sorted keys;
- `ticket_mask.safetensors`: the mask, encoded as described in `hf_lottery.serialization` (no pickle);
- `README.md`: the model card (`hf_lottery.model_card`), and `sparsity_plot.png` when the history has metrics.

A sparse model folder ([`save_sparse_model`]) is a standard `save_pretrained` checkpoint whose pruned weights are
zero, with the ticket files beside the weights.

Base fingerprint
----------------
A ticket is found on particular weights θ0; `load_model` checks that the base it loads is that one.

- Tensor digest: the SHA-256 (hex) of the tensor's values cast to `float32`, in C order, as little-endian bytes.
  Casting makes the digest independent of the storage dtype when the cast is exact (bfloat16 / float16 weights
  upcast to float32 hash alike).
- `base_fingerprint`: `"sha256:"` followed by the SHA-256 (hex) of the UTF-8 text made of one line
  `"{name}\\t{shape}\\t{digest}\\n"` per prunable parameter, sorted by name, where `shape` is the dimensions joined
  by `"x"` (e.g. `768x3072`; empty for a scalar).

The per-tensor digests are stored too (`prunable_parameters[i]["sha256"]`), so a mismatch names the first tensor
that differs.

Writes are atomic: files go to a temporary folder beside the target, which is then renamed into place (a new
folder) or whose files replace the target's one by one with `ticket_config.json` last. The config records the
SHA-256 of the mask file, so a folder caught between two saves is detected on load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import huggingface_hub
import numpy as np
import torch
from torch import nn
from transformers.utils import logging

from .constants import (
    LIBRARY_NAME,
    SPARSITY_PLOT_NAME,
    TICKET_CARD_NAME,
    TICKET_CONFIG_NAME,
    TICKET_FORMAT_VERSION,
    TICKET_MASK_NAME,
)
from .io_utils import write_json

if TYPE_CHECKING:
    from .masks import TicketMask

logger = logging.get_logger(__name__)

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
# Arguments `from_pretrained` passes on to `huggingface_hub.hf_hub_download`.
_DOWNLOAD_ARGUMENTS = frozenset(inspect.signature(huggingface_hub.hf_hub_download).parameters) - {
    "repo_id",
    "filename",
}
TICKET_FILES = (TICKET_CONFIG_NAME, TICKET_MASK_NAME, TICKET_CARD_NAME, SPARSITY_PLOT_NAME)
# Weight files of a `save_pretrained` checkpoint; stale ones are removed when a sparse model is saved over another.
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)([-.].*)?\.(safetensors|bin)(\.index\.json)?$")


class TicketUploadError(OSError):
    """Pushing a ticket to the Hub failed; `local_dir` holds the complete ticket folder that was to be uploaded."""

    def __init__(self, message: str, local_dir: Path):
        super().__init__(message)
        self.local_dir = local_dir


# -- Fingerprints ---------------------------------------------------------------------------------------------
def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of `tensor`'s values as float32, C order, little-endian (see the module docstring)."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    if sys.byteorder != "little":
        array = array.astype("<f4")
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def combine_digests(entries: list[dict[str, Any]]) -> str | None:
    """The `base_fingerprint` of `[{"name", "shape", "sha256"}]` entries; None if a digest is missing."""
    if not entries or any(not e.get("sha256") for e in entries):
        return None
    lines = "".join(
        f"{e['name']}\t{'x'.join(str(int(d)) for d in e['shape'])}\t{e['sha256']}\n"
        for e in sorted(entries, key=lambda e: e["name"])
    )
    return "sha256:" + hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- Config ---------------------------------------------------------------------------------------------------
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
        metadata={"help": "'sha256:<hex>' over the prunable tensors of θ0 (see hf_lottery.hub); None if unknown."},
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
        expected = {"prunable_parameters": list, "history": list, "lottery_args": dict, "model_kwargs": dict}
        for key, kind in expected.items():
            if key in data and not isinstance(data[key], kind):
                raise ValueError(f"{source}: {key!r} must be a {kind.__name__}, got {type(data[key]).__name__}.")
        entries = data.get("prunable_parameters", [])
        if not all(
            isinstance(e, Mapping) and isinstance(e.get("name"), str) and isinstance(e.get("shape"), list)
            for e in entries
        ):
            raise ValueError(f"{source}: every entry of 'prunable_parameters' needs a 'name' and a 'shape'.")
        return cls.from_metadata(data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> TicketConfig:
        """Read `ticket_config.json`; a `ValueError` names the file when it is not valid JSON or not a config."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); the ticket folder is damaged.") from None
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
        entries = []
        for name, m in mask.items():
            if name not in source:
                raise ValueError(f"Cannot fingerprint {name!r}: it is not among the weights given.")
            entries.append({"name": name, "shape": list(m.shape), "sha256": tensor_digest(source[name])})
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

    def for_mask(self, mask: TicketMask) -> TicketConfig:
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
            sparsity=mask.sparsity,
            lottery_args=dict(self.lottery_args),
            model_kwargs=dict(self.model_kwargs),
            history=list(self.history),
            extra=dict(self.extra),
        )


def _lottery_args_dict(args: Any) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    if dataclasses.is_dataclass(args):
        from transformers import TrainingArguments

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


# -- Folders --------------------------------------------------------------------------------------------------
def _ticket_files(
    mask: TicketMask, folder: Path, *, repo_id: str | None, create_card: bool, has_weights: bool
) -> None:
    """Write the ticket files into `folder` (a fresh temporary folder), the config last."""
    from . import __version__
    from .history import plot_history
    from .model_card import render_ticket_card
    from .serialization import save_masks

    config = TicketConfig.from_metadata(mask.metadata).for_mask(mask)
    config.hf_lottery_version = __version__
    config.format_version = TICKET_FORMAT_VERSION
    save_masks(folder / TICKET_MASK_NAME, mask)
    config.mask_sha256 = _file_sha256(folder / TICKET_MASK_NAME)
    plotted = bool(config.history) and plot_history(folder / SPARSITY_PLOT_NAME, config.history, config.metric)
    if create_card:
        card = render_ticket_card(
            mask, config=config, repo_id=repo_id, plot=SPARSITY_PLOT_NAME if plotted else None, has_weights=has_weights
        )
        (folder / TICKET_CARD_NAME).write_text(str(card), encoding="utf-8")
    write_json(folder / TICKET_CONFIG_NAME, config.to_dict())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def _staging(target: Path):
    """A temporary folder beside `target`, removed on exit (after its files were moved, or on error)."""
    if target.exists() and not target.is_dir():
        raise ValueError(f"{target} exists and is not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the renamed folder should not be
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, target: Path, *, remove: tuple[str, ...] = (), drop_stale_weights: bool = False) -> None:
    """Move the files of `staging` into `target`: one rename for a new folder, else file by file, config last."""
    for path in staging.iterdir():  # temporary files are created private (mkstemp); give them the usual mode
        if path.is_file():
            os.chmod(path, 0o666 & ~_umask())
    if not target.exists():
        os.rename(staging, target)
        return
    names = sorted(p.name for p in staging.iterdir())
    for name in names:
        if (staging / name).is_dir():
            raise ValueError(f"Unexpected folder {name!r} in a checkpoint; cannot merge it into {target}.")
    for name in [n for n in names if n != TICKET_CONFIG_NAME]:
        os.replace(staging / name, target / name)
    stale = [n for n in remove if n not in names]
    if drop_stale_weights:
        stale += [p.name for p in target.iterdir() if _WEIGHT_FILE.match(p.name) and p.name not in names]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            (target / name).unlink()
    if TICKET_CONFIG_NAME in names:
        os.replace(staging / TICKET_CONFIG_NAME, target / TICKET_CONFIG_NAME)


def save_ticket(
    mask: TicketMask,
    save_directory: str | os.PathLike,
    *,
    is_main_process: bool = True,
    repo_id: str | None = None,
    create_card: bool = True,
) -> Path:
    """Write `mask` as a ticket folder (see [`TicketMask.save_pretrained`]); returns the folder."""
    target = Path(save_directory)
    if not is_main_process:
        return target
    with _staging(target) as staging:
        _ticket_files(mask, staging, repo_id=repo_id, create_card=create_card, has_weights=False)
        remove = () if create_card else (TICKET_CARD_NAME,)
        _commit(staging, target, remove=remove + (SPARSITY_PLOT_NAME,))
    logger.info("Ticket saved in %s (%d tensors, sparsity %.2f%%).", target, len(mask), 100 * mask.sparsity)
    return target


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
    from .masks import TicketMask

    mask = mask if isinstance(mask, TicketMask) else TicketMask(mask)
    inner = getattr(model, "module", model)
    mask.validate(inner)
    target = Path(save_directory)
    if not is_main_process:
        return target
    state = dict(state_dict if state_dict is not None else inner.state_dict())
    for name, m in mask.items():
        if name not in state:
            raise ValueError(f"The state dict to save has no entry {name!r}, which the ticket masks.")
        tensor = state[name]
        state[name] = tensor.masked_fill(~m.to(tensor.device), 0)  # +0.0, where tensor * mask gives -0.0
    with _staging(target) as staging:
        inner.save_pretrained(staging, state_dict=state, **save_pretrained_kwargs)
        _ticket_files(mask, staging, repo_id=None, create_card=create_card, has_weights=True)
        _commit(staging, target, remove=(SPARSITY_PLOT_NAME,), drop_stale_weights=True)
    logger.info("Sparse model saved in %s (sparsity %.2f%% of the masked weights).", target, 100 * mask.sparsity)
    return target


# -- Loading --------------------------------------------------------------------------------------------------
def _local_folder(name_or_path: str | os.PathLike, subfolder: str | None) -> Path | None:
    """The local ticket folder meant by `name_or_path`/`subfolder`, or None when it is no local folder."""
    folder = Path(name_or_path, subfolder) if subfolder else Path(name_or_path)
    if not folder.is_dir():
        return None
    config_file, mask_file = folder / TICKET_CONFIG_NAME, folder / TICKET_MASK_NAME
    if not config_file.is_file():
        partial = " (a mask but no config: it was not completely written)" if mask_file.is_file() else ""
        raise ValueError(f"{folder} is not a ticket folder: {TICKET_CONFIG_NAME} is missing{partial}.")
    if not mask_file.is_file():
        raise ValueError(f"{folder} holds {TICKET_CONFIG_NAME} but not {TICKET_MASK_NAME}; the ticket is incomplete.")
    return folder


def _download(repo_id: str, filename: str, label: str, **kwargs: Any) -> Path:
    from . import __version__

    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id, filename, library_name=LIBRARY_NAME, library_version=__version__, **kwargs
            )
        )
    except Exception as err:
        raise OSError(
            f"Can't load a ticket from {label!r}: it is not a local folder, and downloading {filename} from the "
            f"Hub failed ({type(err).__name__}: {err})."
        ) from err


def load_ticket(
    pretrained_ticket_name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> TicketMask:
    """Read a ticket folder or Hub repository (see [`TicketMask.from_pretrained`]): local folder first."""
    from .masks import TicketMask
    from .serialization import load_masks

    unknown = set(hub_kwargs) - _DOWNLOAD_ARGUMENTS
    if unknown:
        raise TypeError(f"Unexpected arguments for loading a ticket: {', '.join(sorted(unknown))}.")
    folder = _local_folder(pretrained_ticket_name_or_path, subfolder)
    if folder is not None:
        label = str(folder)
        config_file, mask_file = folder / TICKET_CONFIG_NAME, folder / TICKET_MASK_NAME
        config = TicketConfig.from_json_file(config_file)
    else:
        repo_id = str(pretrained_ticket_name_or_path)
        label = f"{repo_id}{'/' + subfolder if subfolder else ''}{'@' + revision if revision else ''}"
        download = dict(subfolder=subfolder, revision=revision, **hub_kwargs)
        config_file = _download(repo_id, TICKET_CONFIG_NAME, label, **download)
        config = TicketConfig.from_json_file(config_file)  # an unknown format version stops here
        mask_file = _download(repo_id, TICKET_MASK_NAME, label, **download)
    masks = load_masks(mask_file)
    recorded = [(e.get("name"), list(e.get("shape", []))) for e in config.prunable_parameters]
    stored = [(name, list(m.shape)) for name, m in masks.items()]
    if recorded != stored:
        first = next(
            (f"{r} in the config vs {s} in the mask" for r, s in zip(recorded, stored) if r != s),
            f"{len(recorded)} parameters in the config vs {len(stored)} in the mask",
        )
        raise ValueError(f"{label}: {TICKET_CONFIG_NAME} and {TICKET_MASK_NAME} disagree ({first}).")
    if config.mask_sha256 and _file_sha256(mask_file) != config.mask_sha256:
        raise ValueError(
            f"{label}: {TICKET_MASK_NAME} is not the mask {TICKET_CONFIG_NAME} was written with (its sha256 "
            "differs): the folder was partly overwritten or edited. Save or download the ticket again."
        )
    return TicketMask(masks, metadata=config.to_dict())


def find_ticket(folder: str | os.PathLike) -> TicketMask | None:
    """The ticket saved beside a model's weights in `folder`, or None (see [`TicketMask.from_model_folder`])."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if not (folder / TICKET_CONFIG_NAME).exists() and not (folder / TICKET_MASK_NAME).exists():
        return None
    return load_ticket(folder)


def verify_base(mask: TicketMask, model: nn.Module, config: TicketConfig | None = None) -> None:
    """Check that `model` holds the θ0 the ticket was found on (its fingerprint).

    Raises:
        `ValueError`: naming the first prunable tensor whose weights differ.
    """
    config = config or TicketConfig.from_metadata(mask.metadata)
    recorded = {e.get("name"): e.get("sha256") for e in config.prunable_parameters}
    if not config.base_fingerprint or any(not recorded.get(name) for name in mask):
        logger.warning("The ticket records no fingerprint of its base weights; the base model cannot be verified.")
        return
    params = dict(model.named_parameters())
    differing = [name for name in mask if tensor_digest(params[name]) != recorded[name]]
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
        f"tensors differ, first {name!r} (sha256 {tensor_digest(params[name])[:12]}… vs {recorded[name][:12]}… "
        f"recorded). The ticket was found on {found_on}.{hint} Load that base, or pass verify_base=False to "
        "apply the mask anyway."
    )


def load_ticket_model(
    mask: TicketMask,
    model_class: Any,
    base: str | os.PathLike | nn.Module | None = None,
    verify_base_weights: bool = True,
    **from_pretrained_kwargs: Any,
) -> nn.Module:
    """θ0 ⊙ m: load the base model and zero the pruned weights (see [`TicketMask.load_model`])."""
    config = TicketConfig.from_metadata(mask.metadata)
    if isinstance(base, nn.Module):
        model = base
    else:
        path = base if base is not None else config.base_model_name_or_path
        if not path:
            raise ValueError("The ticket does not record its base model; pass `base=` (a Hub id or a local folder).")
        if base is None and config.revision and "revision" not in from_pretrained_kwargs:
            from_pretrained_kwargs["revision"] = config.revision
        for key, value in config.model_kwargs.items():
            from_pretrained_kwargs.setdefault(key, value)
        model = model_class.from_pretrained(path, **from_pretrained_kwargs)
    mask.validate(model)
    if verify_base_weights:
        verify_base(mask, model, config)
    return mask.apply_(model)


# -- Hub ------------------------------------------------------------------------------------------------------
def push_ticket(
    mask: TicketMask,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    save_directory: str | os.PathLike | None = None,
) -> Any:
    """Save the ticket locally, then upload the folder to `repo_id` in one commit (see [`TicketMask.push_to_hub`])."""
    keep = save_directory is not None
    local = Path(save_directory) if keep else Path(tempfile.mkdtemp(prefix="hf_lottery-ticket-")) / "ticket"
    save_ticket(mask, local, repo_id=repo_id)
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and not revision.startswith("refs/pr"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        operations = [  # the ticket's own files only: a kept save_directory may hold others
            huggingface_hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(local / name))
            for name in sorted(TICKET_FILES)
            if (local / name).is_file()
        ]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload lottery ticket (sparsity {100 * mask.sparsity:.1f}%)",
            commit_description=commit_description,
            repo_type="model",
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as err:
        raise TicketUploadError(
            f"Uploading the ticket to the Hub repository {repo_id!r} failed ({type(err).__name__}: {err}). "
            f"The complete ticket is saved in {local}; retry with "
            f"TicketMask.from_pretrained({str(local)!r}).push_to_hub({repo_id!r}).",
            local_dir=local,
        ) from err
    if not keep:
        shutil.rmtree(local.parent, ignore_errors=True)
    logger.info("Ticket pushed to %s.", repo_id)
    return info
