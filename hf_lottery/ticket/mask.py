"""`TicketMask`: a named dict of boolean tensors (True = kept) with a sparsity report."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.parameters import check_mask_fits, named_parameters
from .config import TicketConfig
from .figures import mask_figures
from .folder import find_ticket, load_ticket, push_ticket, save_ticket
from .sparse_model import load_base_model
from .sparse_model import verify_base as verify_base_weights


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
        if set(self.keys()) != set(other.keys()):
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
        return sum(int(torch.count_nonzero(m)) for m in self._masks.values())

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
        return mask_figures(self._masks)

    def is_subset_of(self, other: Mapping[str, torch.Tensor]) -> bool:
        """True if every weight kept here is also kept in `other` (masks are nested)."""
        return all(name in other and bool((self[name] <= other[name].bool()).all()) for name in self._masks)

    # -- Models -----------------------------------------------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Check that every masked parameter exists in `model` with the mask's shape.

        Raises:
            `ValueError`: naming the first parameter that is missing or whose shape differs.
        """
        check_mask_fits(self._masks, model)

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

    # -- The ticket artifact (hf_lottery.ticket) --------------------------------------------------------------
    @property
    def config(self) -> TicketConfig:
        """The [`TicketConfig`] read from `metadata` (base model, fingerprint, task, method, history...)."""
        return TicketConfig.from_metadata(self.metadata)

    def with_metadata(self, metadata: Mapping[str, Any] | None = None, **updates: Any) -> TicketMask:
        """A new mask with the same tensors and `metadata` (default: the current one) updated with `updates`.

        Example:
            ```python
            >>> config = TicketConfig.from_model(model, mask, weights=theta0, lottery_args=args, history=history)
            >>> ticket = mask.with_metadata(config.to_dict())
            ```
        """
        merged = dict(self.metadata if metadata is None else metadata)
        merged.update(updates)
        return type(self)(self._masks, merged)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        *,
        create_card: bool = True,
        push_to_hub: bool = False,
        **push_kwargs: Any,
    ) -> Path:
        """Save the ticket as a folder: `ticket_config.json`, `ticket_mask.safetensors`, `README.md` and the plot.

        The folder is written atomically: a new folder appears complete, and an existing one has its files
        replaced one by one with `ticket_config.json` last (which records the mask file's sha256, so a folder
        caught between two saves fails to load rather than mixing them).

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write (created if needed).
            is_main_process (`bool`, *optional*, defaults to `True`): only the main process writes (distributed
                training: pass `trainer.args.should_save` or `accelerator.is_main_process`).
            create_card (`bool`, *optional*, defaults to `True`): render the model card `README.md`.
            push_to_hub (`bool`, *optional*, defaults to `False`): also push the folder (see
                [`~TicketMask.push_to_hub`]); `repo_id` defaults to the folder's name.
            push_kwargs: arguments of [`~TicketMask.push_to_hub`] when `push_to_hub=True`.

        Returns:
            `Path`: the folder.
        """
        if push_kwargs and not push_to_hub:
            raise TypeError(f"Unexpected arguments without push_to_hub=True: {', '.join(push_kwargs)}.")
        if push_to_hub and is_main_process:
            repo_id = push_kwargs.pop("repo_id", None) or Path(save_directory).name
            push_ticket(self._masks, self.metadata, repo_id, save_directory=save_directory, **push_kwargs)
            return Path(save_directory)
        return save_ticket(
            self._masks, self.metadata, save_directory, is_main_process=is_main_process, create_card=create_card
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_ticket_name_or_path: str | os.PathLike,
        revision: str | None = None,
        subfolder: str | None = None,
        token: bool | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **hub_kwargs: Any,
    ) -> TicketMask:
        """Load a ticket from a local folder or, when no such folder exists, from a Hub repository.

        Args:
            pretrained_ticket_name_or_path (`str` or `os.PathLike`): a folder written by
                [`~TicketMask.save_pretrained`] (or [`save_sparse_model`]), or a Hub repository id.
            revision (`str`, *optional*): branch, tag or commit of the Hub repository.
            subfolder (`str`, *optional*): folder of the ticket inside the folder or repository.
            token (`str` or `bool`, *optional*): Hub token.
            cache_dir (`str` or `os.PathLike`, *optional*): Hub cache folder.
            hub_kwargs: other arguments of `huggingface_hub.hf_hub_download` (`force_download`,
                `local_files_only`...).

        Returns:
            [`TicketMask`]: the mask; its `metadata` is the ticket config as a dict (see [`~TicketMask.config`]).

        Raises:
            `ValueError`: a damaged or truncated mask file (naming file and tensor), a config of an unknown
            format version, or config and mask that disagree. `OSError`: nothing found locally or on the Hub.
        """
        if token is not None:
            hub_kwargs["token"] = token
        if cache_dir is not None:
            hub_kwargs["cache_dir"] = cache_dir
        masks, config = load_ticket(
            pretrained_ticket_name_or_path, revision=revision, subfolder=subfolder, **hub_kwargs
        )
        return cls(masks, metadata=config.to_dict())

    @classmethod
    def from_model_folder(cls, folder: str | os.PathLike) -> TicketMask | None:
        """The ticket saved beside a model's weights (by [`save_sparse_model`]) in `folder`, or None if there is none.

        Raises:
            `ValueError`: when the ticket files are there but incomplete or damaged.
        """
        found = find_ticket(folder)
        if found is None:
            return None
        masks, config = found
        return cls(masks, metadata=config.to_dict())

    def push_to_hub(
        self,
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
        """Upload the ticket folder to a Hub model repository in one commit (creating the repository if needed).

        The ticket is first saved locally (to `save_directory`, or a temporary folder removed after a successful
        upload), so a failed upload leaves a complete folder behind: the raised [`TicketUploadError`] says where.

        Args:
            repo_id (`str`): the repository, e.g. `"user/minilm-sst2-ticket-60"`.
            commit_message (`str`, *optional*): defaults to `"Upload lottery ticket (sparsity ...)"`.
            commit_description (`str`, *optional*): the commit's description.
            private (`bool`, *optional*): visibility of a newly created repository.
            token (`str` or `bool`, *optional*): Hub token; default the stored login.
            revision (`str`, *optional*): branch to commit to (created if missing).
            create_pr (`bool`, *optional*, defaults to `False`): open a pull request instead of committing.
            save_directory (`str` or `os.PathLike`, *optional*): keep the uploaded folder here.

        Returns:
            `huggingface_hub.CommitInfo`: the commit.
        """
        return push_ticket(
            self._masks,
            self.metadata,
            repo_id,
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
            save_directory=save_directory,
        )

    def load_model(
        self,
        model_class: Any,
        base: str | os.PathLike | nn.Module | None = None,
        verify_base: bool = True,
        **from_pretrained_kwargs: Any,
    ) -> nn.Module:
        """The ticket's network θ0 ⊙ m: the base model with the pruned weights zeroed.

        Loads `model_class.from_pretrained(base or config.base_model_name_or_path, revision=config.revision,
        **from_pretrained_kwargs)`, checks the masked parameters' names and shapes, checks the base weights against
        the recorded fingerprint, then applies the mask.

        Args:
            model_class: a class with `from_pretrained`, e.g. `AutoModelForSequenceClassification`.
            base (`str`, `os.PathLike` or `nn.Module`, *optional*): another path or Hub id of the base (the recorded
                revision is then not passed), or an already loaded model (modified in place).
            verify_base (`bool`, *optional*, defaults to `True`): refuse base weights whose fingerprint differs
                from the one recorded when the ticket was found.
            from_pretrained_kwargs: passed to `from_pretrained` (`num_labels`, `dtype`, `revision`, `token`...);
                the recorded `model_kwargs` (e.g. `num_labels`) are the defaults.

        Raises:
            `ValueError`: naming the first parameter missing or of another shape, or the first tensor whose
            weights differ from the recorded base.

        Example:
            ```python
            >>> ticket = TicketMask.from_pretrained("user/minilm-sst2-ticket-60")
            >>> model = ticket.load_model(AutoModelForSequenceClassification)
            ```
        """
        config = self.config
        model = load_base_model(config, model_class, base, **from_pretrained_kwargs)
        self.validate(model)
        if verify_base:
            verify_base_weights(self._masks, model, config)
        return self.apply_(model)
