"""Ticket folders: write, read and find them, and push one to the Hub.

A ticket folder (format version 1) holds

- `ticket_config.json`: a [`TicketConfig`] as JSON with sorted keys;
- `ticket_mask.safetensors`: the mask, encoded as described in `hf_lottery.ticket.codec` (no pickle);
- `README.md`: the model card (`hf_lottery.ticket.card`), and `sparsity_plot.png` when the history has metrics.

Storage returns plain tensors and the config; [`TicketMask`] builds itself from them. Writes are atomic: files go
to a temporary folder beside the target, which is then renamed into place (a new folder) or whose files replace
the target's one by one with `ticket_config.json` last. The config records the SHA-256 of the mask file, so a
folder caught between two saves is detected on load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ..constants import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_TICKET_KEY,
    SPARSITY_PLOT_NAME,
    TICKET_CARD_NAME,
    TICKET_CONFIG_NAME,
    TICKET_FORMAT_VERSION,
    TICKET_MASK_NAME,
    __version__,
)
from ..utils.io import commit_folder, read_json, staging_folder, sweep_staging_folders, write_json
from .card import render_ticket_card
from .codec import load_masks, save_masks
from .config import TicketConfig
from .figures import mask_figures
from .fingerprint import file_sha256
from .history import plot_history, plot_title
from .hub import DOWNLOAD_ARGUMENTS, TicketUploadError, download_file, upload_files

logger = logging.get_logger(__name__)

TICKET_FILES = (TICKET_CONFIG_NAME, TICKET_MASK_NAME, TICKET_CARD_NAME, SPARSITY_PLOT_NAME)
# Files whose digests the config records besides the mask's (`files_sha256`).
COMMITTED_FILES = (TICKET_CARD_NAME, SPARSITY_PLOT_NAME)


def write_ticket_files(
    mask: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
    folder: Path,
    *,
    repo_id: str | None,
    create_card: bool,
    has_weights: bool,
) -> str:
    """Write the ticket files into `folder` (a fresh temporary folder), the config last; returns the mask's sha256."""
    config = TicketConfig.from_metadata(metadata).for_mask(mask)
    config.hf_lottery_version = __version__
    config.format_version = TICKET_FORMAT_VERSION
    save_masks(folder / TICKET_MASK_NAME, mask)
    mask_sha256 = file_sha256(folder / TICKET_MASK_NAME)
    config.mask_sha256 = mask_sha256
    title = plot_title(config.task, config.base_model_name_or_path)
    plotted = bool(config.history) and plot_history(folder / SPARSITY_PLOT_NAME, config.history, config.metric, title)
    if create_card:
        card = render_ticket_card(
            mask, config=config, repo_id=repo_id, plot=SPARSITY_PLOT_NAME if plotted else None, has_weights=has_weights
        )
        (folder / TICKET_CARD_NAME).write_text(str(card), encoding="utf-8")
    config.files_sha256 = {name: file_sha256(folder / name) for name in COMMITTED_FILES if (folder / name).is_file()}
    write_json(folder / TICKET_CONFIG_NAME, config.to_dict())
    return mask_sha256


def save_ticket(
    mask: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
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
    with staging_folder(target) as staging:
        mask_sha256 = write_ticket_files(
            mask, metadata, staging, repo_id=repo_id, create_card=create_card, has_weights=False
        )
        remove = () if create_card else (TICKET_CARD_NAME,)
        commit_folder(staging, target, remove=remove + (SPARSITY_PLOT_NAME,), last=TICKET_CONFIG_NAME)
    sparsity = mask_figures(mask)["__total__"]["sparsity"]
    record_in_adapter_config(target, sparsity, mask_sha256)
    logger.info("Ticket saved in %s (%d tensors, sparsity %.2f%%).", target, len(mask), 100 * sparsity)
    return target


def record_in_adapter_config(folder: Path, sparsity: float, mask_sha256: str) -> None:
    """Record the ticket in the `adapter_config.json` of a peft adapter saved in the same folder, if there is one.

    An adapter trained over a ticket computes its trained function only over the ticket's sparse base, so the
    adapter's own config says so: which files hold the ticket, its sparsity and mask digest, and how to load both
    (`hf_lottery.load_peft_ticket`). A plain `PeftModel.from_pretrained` ignores the key, with peft's warning.
    """
    path = folder / ADAPTER_CONFIG_NAME
    if not path.is_file():
        return
    try:
        adapter_config = read_json(path, what="the adapter config", hint="Save the adapter again.")
    except ValueError as err:
        logger.warning("%s The ticket is saved beside it but not recorded in it.", err)
        return
    if not isinstance(adapter_config, dict):
        logger.warning("%s holds no JSON object; the ticket is saved beside it but not recorded in it.", path)
        return
    adapter_config[ADAPTER_TICKET_KEY] = {
        "ticket_config": TICKET_CONFIG_NAME,
        "ticket_mask": TICKET_MASK_NAME,
        "mask_sha256": mask_sha256,
        "sparsity": sparsity,
        "hf_lottery_version": __version__,
        "load_with": "hf_lottery.load_peft_ticket(base_model, <this folder>)",
    }
    write_json(path, adapter_config)


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


def load_ticket(
    pretrained_ticket_name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], TicketConfig]:
    """Read a ticket folder or Hub repository (see [`TicketMask.from_pretrained`]): local folder first.

    Returns:
        `tuple`: the masks `{name: BoolTensor}` in the saved order, and the [`TicketConfig`].
    """
    unknown = set(hub_kwargs) - DOWNLOAD_ARGUMENTS
    if unknown:
        raise TypeError(f"Unexpected arguments for loading a ticket: {', '.join(sorted(unknown))}.")
    folder = _local_folder(pretrained_ticket_name_or_path, subfolder)
    if folder is not None:
        label = str(folder)
        sweep_staging_folders(folder)
        config_file, mask_file = folder / TICKET_CONFIG_NAME, folder / TICKET_MASK_NAME
        config = TicketConfig.from_json_file(config_file)
        _check_committed_files(folder, config)
    else:
        repo_id = str(pretrained_ticket_name_or_path)
        label = f"{repo_id}{'/' + subfolder if subfolder else ''}{'@' + revision if revision else ''}"
        download = dict(subfolder=subfolder, revision=revision, **hub_kwargs)
        config_file = download_file(repo_id, TICKET_CONFIG_NAME, label, **download)
        config = TicketConfig.from_json_file(config_file)  # an unknown format version stops here
        mask_file = download_file(repo_id, TICKET_MASK_NAME, label, **download)
    recorded = [(e["name"], list(e.get("shape", []))) for e in config.prunable_parameters]  # from_dict checked names
    # Decoding is bounded by the recorded shapes, so a damaged file is named precisely before the digest check.
    masks = load_masks(mask_file, expected_shapes=recorded)
    if config.mask_sha256 and file_sha256(mask_file) != config.mask_sha256:
        raise ValueError(
            f"{label}: {TICKET_MASK_NAME} is not the mask {TICKET_CONFIG_NAME} was written with (its sha256 "
            "differs): the folder was partly overwritten or edited. Save or download the ticket again."
        )
    return masks, config


def _check_committed_files(folder: Path, config: TicketConfig) -> None:
    """Warn when the card or plot beside the config is not the one written with it (a save killed after replacing
    them, or a hand edit): the ticket itself is the config's and the mask's, which are checked on their own."""
    stale = [
        name
        for name, digest in config.files_sha256.items()
        if name in COMMITTED_FILES and (folder / name).is_file() and file_sha256(folder / name) != digest
    ]
    if stale:
        logger.warning(
            "%s: %s not the one(s) written with %s (sha256 differs): a save into this folder was interrupted, or "
            "the file was edited. The ticket loads as its config and mask describe it; save it again to rewrite "
            "the card and plot.",
            folder,
            " and ".join(stale) + (" is" if len(stale) == 1 else " are"),
            TICKET_CONFIG_NAME,
        )


def find_ticket(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], TicketConfig] | None:
    """The ticket saved beside a model's weights in `folder` (masks and config), or None (see
    [`TicketMask.from_model_folder`])."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    if not (folder / TICKET_CONFIG_NAME).exists() and not (folder / TICKET_MASK_NAME).exists():
        return None
    return load_ticket(folder)


def push_ticket(
    mask: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any],
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
    local = (
        Path(save_directory)
        if save_directory is not None
        else Path(tempfile.mkdtemp(prefix="hf_lottery-ticket-")) / "ticket"
    )
    save_ticket(mask, metadata, local, repo_id=repo_id)
    sparsity = mask_figures(mask)["__total__"]["sparsity"]
    try:
        info = upload_files(  # the ticket's own files only: a kept save_directory may hold others
            local,
            TICKET_FILES,
            repo_id,
            commit_message=commit_message or f"Upload lottery ticket (sparsity {100 * sparsity:.1f}%)",
            commit_description=commit_description,
            private=private,
            token=token,
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
