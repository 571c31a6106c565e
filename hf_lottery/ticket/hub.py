"""The Hugging Face Hub: download a ticket's files, upload a ticket folder in one commit."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import huggingface_hub
from transformers.utils import logging

from ..constants import LIBRARY_NAME, __version__

logger = logging.get_logger(__name__)

# Arguments `from_pretrained` passes on to `huggingface_hub.hf_hub_download`.
DOWNLOAD_ARGUMENTS = frozenset(inspect.signature(huggingface_hub.hf_hub_download).parameters) - {
    "repo_id",
    "filename",
}


class TicketUploadError(OSError):
    """Pushing a ticket to the Hub failed; `local_dir` holds the complete ticket folder that was to be uploaded."""

    def __init__(self, message: str, local_dir: Path):
        super().__init__(message)
        self.local_dir = local_dir


def download_file(repo_id: str, filename: str, label: str, **kwargs: Any) -> Path:
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


def upload_files(
    local: Path,
    names: Sequence[str],
    repo_id: str,
    *,
    commit_message: str,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload the files `names` of the folder `local` to the model repository `repo_id` in one commit.

    The repository (and the branch `revision`) is created when missing; returns the `CommitInfo`.
    """
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    operations = [
        huggingface_hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(local / name))
        for name in sorted(names)
        if (local / name).is_file()
    ]
    return api.create_commit(
        repo_id,
        operations,
        commit_message=commit_message,
        commit_description=commit_description,
        repo_type="model",
        revision=revision,
        create_pr=create_pr,
    )
